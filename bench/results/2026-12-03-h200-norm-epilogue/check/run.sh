#!/usr/bin/env bash
# Full GPU suite, memcheck/racecheck on the GEMV, profiles at 1 / 16 / 64 rows.
set -u
source build/setup_gpu.sh
L2KV_REQUIRE_GPU=1 timeout 260 build/l2kv_tests --gtest_filter='-*TokenizerOracle*:*ChatTemplateOracle*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
echo "sanitizer: $CS"
if [ -n "$CS" ]; then
  for tool in memcheck racecheck synccheck; do
    L2KV_REQUIRE_GPU=1 timeout 90 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='Dtypes/GemvDtype.*:Dtypes/FusedGemv.*:GemvFp8.*' > $OUT/sanitizer_$tool.log 2>&1; echo "$tool rc=$?" | tee -a $OUT/sanitizer_$tool.log
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|tests from .* ran|FAILED" $OUT/sanitizer_$tool.log | head -5
  done
fi
for b in 1 16 64; do
  timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch $b --profile > $OUT/profile_b$b.log 2>&1
  echo "== batch $b"; grep -E "^steady|^    " $OUT/profile_b$b.log | head -30
done
