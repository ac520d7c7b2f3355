#!/usr/bin/env bash
# W8A8 with the scales applied after the product up to 128 rows: tests, then bf16 against fp8.
set -u
source build/setup_gpu.sh
cp build/run53.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='Fp8Activations.*:Fp8Gemm.*:GemvFp8.*:CudaModel.Fp8*:CudaModel.MixtureOfExperts*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|w8a8\] largest|fp8-|Failure|Expected|actual" $OUT/gpu_tests.log | head -30
B=build/l2kv
for m in llama3-8b llama3-8b-fp8; do
  timeout 150 $B bench --model synthetic:$m --variants split --mode both --steady-batch 1 16 33 64 128 --steady-context 1024 --input-len 512 --output-len 256 --concurrency 64 --json $OUT/$m.json >> $OUT/bench.log 2>&1; echo "$m rc=$?" >> $OUT/bench.log
done
grep -aE "^steady|e2e  |rc=|rror" $OUT/bench.log | sed 's/.*\r//'
