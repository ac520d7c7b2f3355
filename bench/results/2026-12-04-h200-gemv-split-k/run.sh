#!/usr/bin/env bash
# Split-k GEMV (QKV's 384 tiles in clusters of two blocks): GPU tests, sanitizers on the new
# paths, steady steps against the build before (prev/) at 1-16 rows, profiles at 4 and 16.
set -u
source build/setup_gpu.sh
cp build/run12.sh $OUT/run.sh
F='Dtypes/FusedGemv.*:FusedGemvSupports.*:Dtypes/GemvDtype.*:Dtypes/ModelOps.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*:KvStorages/DecodeKernelsAgree.*'
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
echo "tests done at $SECONDS s"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck synccheck; do
  echo "### $tool" >> $OUT/sanitizer.log
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 100 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='Dtypes/GemvDtype.SplitK*:Dtypes/FusedGemv.RopeCache*' >> $OUT/sanitizer.log 2>&1
  echo "$tool rc=$?" | tee -a $OUT/sanitizer.log; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/sanitizer.log | tail -2
done
echo "sanitizers done at $SECONDS s"
S="--mode steady --steady-context 1024 --variants split --steady-reps 30"
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b llama3-8b" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:llama3-8b $S --steady-batch 1 2 4 8 9 12 16 2>&1 | grep -E "^steady" >> $OUT/steady.log
    echo "# $b qwen2.5-7b" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:qwen2.5-7b $S --steady-batch 4 16 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
  echo "steady rep $rep done at $SECONDS s"
done
cat $OUT/steady.log
P="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 4 16 --profile"
for b in prev this; do
  bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
  echo "### $b" >> $OUT/profile.log
  timeout 60 $bin bench $P >> $OUT/profile.log 2>&1
done
grep -E "^###|^steady|^    (qkv|o |gate_up|down|all)|split_decode" $OUT/profile.log
echo "all done at $SECONDS s"
