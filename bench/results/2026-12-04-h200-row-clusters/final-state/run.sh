#!/usr/bin/env bash
# Final state (33f2b16): every GPU test, then memcheck / racecheck / synccheck on the row-cluster kernels.
set -u
source build/setup_gpu.sh
cp build/run73.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 400 build/l2kv_tests --gtest_brief=1 > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|SKIPPED \]|Failure" $OUT/gpu_tests.log | head -20
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 60 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:*ModelOps*RmsNorm*:*ModelOps*Gated*' >> $OUT/sanitizer.log 2>&1; echo "$tool rc=$?" >> $OUT/sanitizer.log
done
grep -E "rc=|ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer.log
