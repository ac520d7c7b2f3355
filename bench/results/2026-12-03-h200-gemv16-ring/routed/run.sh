#!/usr/bin/env bash
# The two-stage ring for 9-16 rows where in <= 4096 (o_proj, QKV): GEMV and model tests, then
# steady llama3-8b against the build before (prev/: the register form at 9-16 rows), alternated.
set -u
source build/setup_gpu.sh
cp build/run6.sh $OUT/run.sh
F='Dtypes/GemvDtype.*:Dtypes/FusedGemv.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*'
L2KV_REQUIRE_GPU=1 timeout 120 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -20
echo "tests done at $SECONDS s"
S="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 30 --steady-batch 1 8 9 12 16 64"
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b" >> $OUT/steady.log
    timeout 60 $bin bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
done
echo "# this qwen2.5-7b" >> $OUT/steady.log
timeout 60 build/l2kv bench --model synthetic:qwen2.5-7b --mode steady --steady-context 1024 --variants split --steady-reps 30 --steady-batch 16 2>&1 | grep -E "^steady" >> $OUT/steady.log
echo "# prev qwen2.5-7b" >> $OUT/steady.log
timeout 60 build/prev/l2kv bench --model synthetic:qwen2.5-7b --mode steady --steady-context 1024 --variants split --steady-reps 30 --steady-batch 16 2>&1 | grep -E "^steady" >> $OUT/steady.log
cat $OUT/steady.log
echo "all done at $SECONDS s"
