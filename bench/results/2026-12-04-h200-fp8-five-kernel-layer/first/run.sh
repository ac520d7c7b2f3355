#!/usr/bin/env bash
# fp8 weights in the five-kernel layer (the fused GEMV forms): tests, sanitizers, fp8 five against nine kernels, bf16.
set -u
source build/setup_gpu.sh
cp build/run62.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 300 build/l2kv_tests --gtest_filter='*FusedGemv*:CudaModel.*:*Fp8FusedOps*:GemvFp8.*:CudaEngineSingle.*:Fixtures/CudaModelFixture.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|\[fp8|fp8-tiny|Failure" $OUT/gpu_tests.log | head -30
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 150 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv.Fp8*' >> $OUT/sanitizer.log 2>&1; echo "$tool rc=$?" >> $OUT/sanitizer.log
done
grep -E "rc=|ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer.log
B=build/l2kv
for rows in 1 0; do
  timeout 100 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 2 4 8 --steady-context 1024 --fused-layer-max-rows $rows >> $OUT/bench.log 2>&1; echo "fp8 fused rows $rows rc=$?" >> $OUT/bench.log
done
timeout 100 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 2 4 8 --steady-context 1024 --fused-layer-max-rows 8 >> $OUT/bench.log 2>&1; echo "fp8 fused rows 8 rc=$?" >> $OUT/bench.log
timeout 100 $B bench --model synthetic:llama3-8b --variants split --mode steady --steady-batch 1 8 --steady-context 1024 >> $OUT/bench.log 2>&1; echo "bf16 rc=$?" >> $OUT/bench.log
timeout 100 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 1 >> $OUT/bench.log 2>&1; echo "fp8 e2e rc=$?" >> $OUT/bench.log
timeout 60 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 --steady-context 1024 --profile > $OUT/profile.log 2>&1; echo "profile rc=$?" >> $OUT/profile.log
grep -aE "^steady|e2e  |rc=|rror" $OUT/bench.log | sed 's/.*\r//'
sed 's/.*\r//' $OUT/profile.log | grep -E "^steady|_kernel |nvjet|qkv |o  |gate_up |down |all |lm_head" | head -20
