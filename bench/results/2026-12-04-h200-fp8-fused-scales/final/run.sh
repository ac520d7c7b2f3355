#!/usr/bin/env bash
# fp8 final: the GEMV with 2 vectors x 4 blocks per SM at 1-8 rows, fused scales; tests, sanitizers, bf16 against fp8 (16-bit and fp8 KV caches).
set -u
source build/setup_gpu.sh
cp build/run61.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:Fp8FusedOpsErrors.*:Fp8GemmSwitches.*:Fp8Activations.*:GemvFp8.*:CudaModel.*:*ModelOps*:CudaEngineSingle.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|fp8-tiny|Failure" $OUT/gpu_tests.log | head -20
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 120 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:Fp8GemmSwitches.*:GemvFp8.MatchesTheHostReference' >> $OUT/sanitizer.log 2>&1; echo "$tool rc=$?" >> $OUT/sanitizer.log
done
grep -E "rc=|ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer.log
B=build/l2kv
for m in llama3-8b-fp8 llama3-8b; do
  timeout 170 $B bench --model synthetic:$m --variants split --mode both --steady-batch 1 4 8 16 33 64 128 --steady-context 1024 --input-len 512 --output-len 256 --concurrency 1 64 --json $OUT/$m.json >> $OUT/bench.log 2>&1; echo "$m rc=$?" >> $OUT/bench.log
done
for m in llama3-8b-fp8 llama3-8b; do
  timeout 100 $B bench --model synthetic:$m --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 64 --kv-cache-dtype fp8 >> $OUT/bench.log 2>&1; echo "$m fp8 KV rc=$?" >> $OUT/bench.log
done
timeout 100 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 16 --steady-context 1024 --steady-chunk 2048 --profile > $OUT/chunk.log 2>&1; echo "chunk rc=$?" >> $OUT/chunk.log
timeout 60 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 64 --steady-context 1024 --profile >> $OUT/chunk.log 2>&1; echo "profile rc=$?" >> $OUT/chunk.log
grep -aE "^steady|e2e  |rc=|rror" $OUT/bench.log | sed 's/.*\r//'
sed 's/.*\r//' $OUT/chunk.log | grep -E "^steady|_kernel |nvjet|qkv |o  |gate_up |down |all " | head -50
