#!/usr/bin/env bash
# Gemma 3 on the CUDA backend: sliding windows in the split decode and warp-MMA prefill kernels,
# the model's norms/GeGLU/soft-capping; kernel and model tests, then synthetic gemma3-27b.
set -u
source build/setup_gpu.sh
cp build/run36.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='CudaModel.*:Fixtures/CudaModelFixture.*:DecodeAttention.SplitSliding*:PrefillAttention.*:*ModelOps*:Variants/CudaEngine.*:TokenBitmaskGpu.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='AllShapes/*:AllBlockSizes/*:DecodeAttention.*:Shapes/Fp8Decode.*:Fp8KvCache.*' > $OUT/gpu_tests_kernels_quick.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests_kernels_quick.log
grep -hE "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests_kernels_quick.log | head
grep -hE "^\[  FAILED|rc=|PASSED|gemma3" $OUT/gpu_tests.log | head -30
timeout 150 build/l2kv bench --model synthetic:gemma3-27b --mode steady --variants split --steady-batch 1 16 64 --steady-context 1024 4096 --steady-reps 20 > $OUT/steady_gemma3.log 2>&1; echo "rc=$?" >> $OUT/steady_gemma3.log
grep -E "^steady|rc=|rror|loaded" $OUT/steady_gemma3.log
timeout 120 build/l2kv bench --model synthetic:gemma3-27b --mode e2e --variants split --concurrency 1 16 --input-len 512 --output-len 128 > $OUT/e2e_gemma3.log 2>&1; echo "rc=$?" >> $OUT/e2e_gemma3.log
grep -E "tok/s|rc=|rror" $OUT/e2e_gemma3.log
echo "all done at $SECONDS s"
