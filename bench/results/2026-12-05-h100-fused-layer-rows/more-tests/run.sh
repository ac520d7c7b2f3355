#!/usr/bin/env bash
# Eighth run: the GPU tests run 99 left out that the new default or the fixed-point sums touch
# (fp8 weights and caches, other architectures, tensor parallelism, the decode kernels' model
# agreement, prompt logprobs, sampler); on an H200 also batch 1 for the bar.
set -u
source build/setup_gpu.sh
cp build/run100.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 120 build/l2kv_tests --gtest_filter='*Fp8*:*DecodeKernelsAgree*:*Gemma*:*Qwen3*:*Mixtral*:*Moe*:*Expert*:*TensorParallel*:*Engine*:*Sampler*:*PagedV1*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
if grep -q H200 $OUT/gpu.txt; then
  for r in 1 2; do timeout 60 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-batch 1 16 --steady-reps 10 >> $OUT/steady.log 2>&1; done
fi
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure" $OUT/tests.log | head -20
grep -hE "^steady" $OUT/steady.log 2>/dev/null | sed 's/  */ /g'
