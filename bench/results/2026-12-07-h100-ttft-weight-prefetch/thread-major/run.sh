#!/usr/bin/env bash
# The next cuBLASLt projection's weights sent to L2 by the row kernel ahead of it
# (--weight-prefetch-mib): the row-kernel and model tests, then steady steps of llama3-8b and
# qwen2.5-7b at 32-256 rows with 0 / 8 / 16 / 32 MiB, alternated twice; a profile at 64 rows.
set -u
source build/setup_gpu.sh
cp build/run10.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 120 build/l2kv_tests --gtest_brief=1 --gtest_filter='*AddRmsNorm*:*Mul*:*WeightPrefetch*:Fixtures/CudaModelFixture.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head -10 >> $OUT/summary.txt
for r in 1 2; do
  for mib in 0 8 16 32; do
    echo "== llama3-8b --weight-prefetch-mib $mib" >> $OUT/steady.log
    timeout 60 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 30 --steady-batch 32 64 128 256 --weight-prefetch-mib $mib 2>&1 | grep steady >> $OUT/steady.log
    echo "llama $mib rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
  for mib in 0 16; do
    echo "== qwen2.5-7b --weight-prefetch-mib $mib" >> $OUT/steady.log
    timeout 60 build/l2kv bench --model synthetic:qwen2.5-7b --variants split --mode steady --steady-reps 30 --steady-batch 64 128 256 --weight-prefetch-mib $mib 2>&1 | grep steady >> $OUT/steady.log
    echo "qwen $mib rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
for mib in 0 16; do
  echo "== llama3-8b --steady-batch 64 --profile --weight-prefetch-mib $mib" >> $OUT/profile.log
  timeout 60 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 20 --steady-batch 64 --profile --weight-prefetch-mib $mib >> $OUT/profile.log 2>&1
  echo "profile $mib rc=$? at $SECONDS s" >> $OUT/summary.txt
done
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log
cat $OUT/summary.txt
sed 's/  */ /g' $OUT/steady.log | cut -c1-110
grep -E "^==|^steady|    (qkv|o|gate_up|down|lm_head|all) |gaps .* in" $OUT/profile.log | cut -c1-120
