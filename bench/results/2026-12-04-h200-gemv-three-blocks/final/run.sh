#!/usr/bin/env bash
# Three blocks per SM for the norm-prologue GEMV at one row: GPU tests, sanitizers on the GEMV
# tests, steady steps against the build before (prev/), profiles of both.
set -u
source build/setup_gpu.sh
cp build/run9.sh $OUT/run.sh
F='Dtypes/FusedGemv.*:FusedGemvSupports.*:GemvFp8.*:Dtypes/GemvDtype.*:Dtypes/ModelOps.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*:Variants/CudaPromptLogprobs.*:KvStorages/DecodeKernelsAgree.*:PairedRows.*'
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
echo "tests done at $SECONDS s"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck synccheck; do
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 120 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv.*' > $OUT/sanitizer_$tool.log 2>&1
  echo "$tool rc=$?"; tail -3 $OUT/sanitizer_$tool.log
done
echo "sanitizers done at $SECONDS s"
S="--mode steady --steady-context 1024 --variants split --steady-reps 30"
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b llama3-8b" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:llama3-8b $S --steady-batch 1 2 4 8 16 2>&1 | grep -E "^steady" >> $OUT/steady.log
    echo "# $b qwen2.5-7b" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:qwen2.5-7b $S --steady-batch 1 2>&1 | grep -E "^steady" >> $OUT/steady.log
    echo "# $b llama2-7b" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:llama2-7b $S --steady-batch 1 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
  echo "steady rep $rep done at $SECONDS s"
done
cat $OUT/steady.log
P="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 1 --profile"
timeout 60 build/l2kv bench $P > $OUT/profile.log 2>&1
timeout 60 build/prev/l2kv bench $P > $OUT/profile_prev.log 2>&1
grep -E "^steady|^    [a-z]" $OUT/profile.log $OUT/profile_prev.log | grep -v gap
echo "all done at $SECONDS s"
