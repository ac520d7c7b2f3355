#!/usr/bin/env bash
# fp8 mixtures of experts (fp8 attention projections, experts widened at load), and the GPU
# tests of every change since the last full run (Gemma 3, sliding windows, head_dim 256, masks
# on a side stream, wide GEMM tuning); synthetic qwen3-30b-a3b in bf16 and with fp8 attention.
set -u
source build/setup_gpu.sh
cp build/run39.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 330 build/l2kv_tests --gtest_filter='CudaModel.*:Fixtures/CudaModelFixture.*:*ModelOps*:Variants/CudaEngine.*:CudaEngineSingle.*:TokenBitmaskGpu.*:GpuSamplerGpuTest.*:Variants/CudaPromptLogprobs.*:DecodeAttention.*:PrefillAttention.*:*Gemv*:*WeightStream*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|fp8-moe-tiny|gemma3 head_dim" $OUT/gpu_tests.log | head -20
L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 120 build/l2kv_tests --gtest_filter='AllShapes/*:AllBlockSizes/*:Shapes/Fp8Decode.*:Fp8KvCache.*:SplitDecode*:KvStorages/*' > $OUT/gpu_tests_kernels_quick.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests_kernels_quick.log
grep -hE "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests_kernels_quick.log | head
for m in qwen3-30b-a3b qwen3-30b-a3b-fp8; do
  timeout 60 build/l2kv bench --model synthetic:$m --mode steady --variants split --steady-batch 1 8 --steady-reps 10 2>&1 | grep -E "^steady|rror" | sed "s/^/$m /" | tee -a $OUT/steady_moe.log
done
echo "all done at $SECONDS s"
