#!/usr/bin/env bash
# Gemma 3 on CUDA, second round: synthetic gemma3-27b steady (MBU counting a sliding layer's
# window only; points whose KV cannot fit reported) and end to end; memcheck and racecheck of
# the windowed split-decode and prefill tests.
set -u
source build/setup_gpu.sh
cp build/run37.sh $OUT/run.sh
timeout 150 build/l2kv bench --model synthetic:gemma3-27b --mode steady --variants split --steady-batch 1 16 64 --steady-context 1024 4096 --steady-reps 20 --json $OUT/steady_gemma3.json > $OUT/steady_gemma3.log 2>&1; echo "rc=$?" >> $OUT/steady_gemma3.log
grep -E "^steady|rc=|rror|loaded" $OUT/steady_gemma3.log
timeout 120 build/l2kv bench --model synthetic:gemma3-27b --mode e2e --variants split --concurrency 1 16 64 --input-len 512 --output-len 128 --json $OUT/e2e_gemma3.json > $OUT/e2e_gemma3.log 2>&1; echo "rc=$?" >> $OUT/e2e_gemma3.log
grep -E "tok/s|rc=|rror" $OUT/e2e_gemma3.log | sed 's/.*\re2e/e2e/'
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck; do
  echo "### $tool" >> $OUT/sanitizer.log
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 200 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='DecodeAttention.SplitSliding*:PrefillAttention.SlidingWindow*' >> $OUT/sanitizer.log 2>&1; echo "$tool rc=$?" >> $OUT/sanitizer.log
done
grep -E "rc=|ERROR SUMMARY|PASSED|FAILED" $OUT/sanitizer.log
echo "all done at $SECONDS s"
