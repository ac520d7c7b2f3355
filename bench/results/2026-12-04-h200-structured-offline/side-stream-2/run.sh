#!/usr/bin/env bash
# The fp8 MoE test against a CPU reference holding the experts as CUDA does; then the cost of
# grammar masks offline, five more alternating pairs (bench --structured-regex, 64 concurrent,
# 256 x 128 -> 128).
set -u
source build/setup_gpu.sh
cp build/run40.sh $OUT/run.sh
tar -xJf build/tok.tar.xz -C build
L2KV_REQUIRE_GPU=1 timeout 100 build/l2kv_tests --gtest_filter='CudaModel.*Mixture*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|moe-tiny" $OUT/gpu_tests.log | head
for rep in 1 2 3 4 5; do
  timeout 100 build/l2kv bench --model synthetic:llama3-8b --tokenizer build/tok_llama3 --mode e2e --variants split --concurrency 64 --num-prompts 256 --input-len 128 --output-len 128 --structured-regex '[a-z ]*' --json $OUT/structured_$rep.json > $OUT/structured_$rep.log 2>&1
  echo "rc=$?" >> $OUT/structured_$rep.log
  grep -E "rc=|rror" $OUT/structured_$rep.log
done
echo "all done at $SECONDS s"
