#!/usr/bin/env bash
# First run of the session: steady decode of the build before the fused layer at 2-16 rows
# (baseline, 055b169) and HEAD alternated twice at 1 / 16 / 64 rows; then the whole GPU test
# suite (quick sizes) without the CPU-only suites.
set -u
source build/setup_gpu.sh
cp build/run101.sh $OUT/run.sh
run() {  # binary, log, args...
  local bin=$1 log=$2; shift 2
  echo "== $bin $*" >> $OUT/$log
  timeout 90 build/$bin bench --model synthetic:llama3-8b --variants split "$@" >> $OUT/$log 2>&1
  echo "$bin $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do
  run baseline/l2kv steady.log --mode steady --steady-batch 1 16 64 --steady-reps 10
  run l2kv steady.log --mode steady --steady-batch 1 16 64 --steady-reps 10
done
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout $((570 - SECONDS)) build/l2kv_tests --gtest_filter='-Engine.*:Tokenizer*:ChatTemplate*:OpenAiProtocol.*:*Grammar*:*Schema*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed, $(grep -c SKIPPED $OUT/tests.log) skipped lines" >> $OUT/summary.txt
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure" $OUT/tests.log | head -20
tail -3 $OUT/tests.log
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-130
