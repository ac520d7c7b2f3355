#!/usr/bin/env bash
# 921b177 on a GPU: the RoPE tests; l2kv_bench_prefill's back-to-back timing; --profile of a
# step with a 2,048-token chunk (TFLOP/s column) and of steady 64-row steps (llama3-8b,
# qwen2.5-7b) and 256-row qwen2.5-7b; l2kv_bench_decode at 16/32/64-token blocks; l2kv_bench_step.
set -u
source build/setup_gpu.sh
cp build/run08.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 60 build/l2kv_tests --gtest_brief=1 --gtest_filter='*Rope*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head -10 >> $OUT/summary.txt
timeout 70 build/l2kv_bench_prefill --attention-lengths 1024 8192 --attention-prompts 1 > $OUT/prefill.log 2>&1
echo "prefill rc=$? at $SECONDS s" >> $OUT/summary.txt
for m in llama3-8b:64 qwen2.5-7b:64 qwen2.5-7b:256; do
  echo "== ${m%%:*} --steady-batch ${m##*:} --profile" >> $OUT/profile.log
  timeout 60 build/l2kv bench --model synthetic:${m%%:*} --variants split --mode steady --steady-reps 20 --steady-batch ${m##*:} --profile >> $OUT/profile.log 2>&1
  echo "profile $m rc=$? at $SECONDS s" >> $OUT/summary.txt
done
echo "== llama3-8b --steady-batch 16 --steady-chunk 2048 --profile" >> $OUT/profile.log
timeout 60 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 5 --steady-batch 16 --steady-chunk 2048 --profile >> $OUT/profile.log 2>&1
echo "profile chunk rc=$? at $SECONDS s" >> $OUT/summary.txt
timeout 90 build/l2kv_bench_decode --models llama3-8b qwen2.5-7b --batches 64 256 --contexts 1024 --layouts HND --v1-prefetch none --split-prefetch off --reps 30 > $OUT/decode.log 2>&1
echo "decode rc=$? at $SECONDS s" >> $OUT/summary.txt
timeout 60 build/l2kv_bench_step --batches 1 64 --contexts 1024 --policies off+pdl on:1+pdl --reps 20 > $OUT/step.log 2>&1
echo "step rc=$? at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log; gzip -k $OUT/profile.log
cat $OUT/summary.txt
grep -E "time split|rate|%" $OUT/prefill.log | head -20
grep -vE "^l2kv|^    gap" $OUT/profile.log | cut -c1-120 | head -150
grep -E "split" $OUT/decode.log | cut -c1-150
tail -12 $OUT/step.log
