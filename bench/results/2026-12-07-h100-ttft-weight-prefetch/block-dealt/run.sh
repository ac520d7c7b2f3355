#!/usr/bin/env bash
# The weight prefetch with rows dealt to blocks in turn (l2kv) and an experiment build issuing
# 128-byte prefetch.global.L2 lines instead of bulk prefetches (variant_lines/l2kv): the row-kernel
# and model tests, then steady steps of llama3-8b at 32-256 rows (0 / 4 / 8 / 16 MiB; lines 8 /
# 16) and qwen2.5-7b at 64-256 (0 / 8; lines 8), alternated twice; profiles at 64 rows.
set -u
source build/setup_gpu.sh
cp build/run11.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 120 build/l2kv_tests --gtest_brief=1 --gtest_filter='*AddRmsNorm*:*Mul*:*WeightPrefetch*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head -10 >> $OUT/summary.txt
for r in 1 2; do
  for v in l2kv:0 l2kv:4 l2kv:8 l2kv:16 variant_lines/l2kv:8 variant_lines/l2kv:16; do
    echo "== llama3-8b ${v%%:*} --weight-prefetch-mib ${v##*:}" >> $OUT/steady.log
    timeout 60 build/${v%%:*} bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 30 --steady-batch 32 64 128 256 --weight-prefetch-mib ${v##*:} 2>&1 | grep steady >> $OUT/steady.log
    echo "llama $v rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
  for v in l2kv:0 l2kv:8 variant_lines/l2kv:8; do
    echo "== qwen2.5-7b ${v%%:*} --weight-prefetch-mib ${v##*:}" >> $OUT/steady.log
    timeout 60 build/${v%%:*} bench --model synthetic:qwen2.5-7b --variants split --mode steady --steady-reps 30 --steady-batch 64 128 256 --weight-prefetch-mib ${v##*:} 2>&1 | grep steady >> $OUT/steady.log
    echo "qwen $v rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
for v in l2kv:0 l2kv:8 variant_lines/l2kv:8; do
  echo "== llama3-8b ${v%%:*} --steady-batch 64 --profile --weight-prefetch-mib ${v##*:}" >> $OUT/profile.log
  timeout 60 build/${v%%:*} bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 20 --steady-batch 64 --profile --weight-prefetch-mib ${v##*:} >> $OUT/profile.log 2>&1
  echo "profile $v rc=$? at $SECONDS s" >> $OUT/summary.txt
done
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log
cat $OUT/summary.txt
sed 's/  */ /g; s/ctx=1024 //; s/(eager [0-9. ]*)//' $OUT/steady.log | cut -c1-90
grep -E "^==|^steady|    (qkv|o|gate_up|down|lm_head|all) |x[0-9]+ " $OUT/profile.log | cut -c1-100
