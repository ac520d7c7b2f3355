#!/usr/bin/env bash
# Prefill attention's page size and two kernel variants: the 8K / 32K sweep at KV blocks of 16,
# 32 and 64 tokens on this tree and at 16 on variant_lazy/ (prefill_lazy_rescale.patch) and
# variant_cpasync/ (prefill_cp_async_producer.patch), alternated twice; the mixed step (16
# decode rows beside a 2,048-token chunk) with the split kernel as the engine runs it (auto: prefetch + PDL), with neither, and with
# prefetch but no PDL; the
# CudaModel tests on this tree and the prefill tests on each variant; a decode profile at 16
# and 64 rows.
set -u
source build/setup_gpu.sh
cp build/run01.sh $OUT/run.sh
sweep() {  # label binary block
  echo "== $1 block $3" >> $OUT/sweep.log
  timeout 45 build/$2 --batch 1 --prompt 64 --reps 1 --attention-lengths 8192 32768 --attention-prompts 1 4 --attention-block-size $3 >> $OUT/sweep.log 2>&1
  echo "sweep $1 $3 rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do
  sweep head l2kv_bench_prefill 16
  sweep lazy variant_lazy/l2kv_bench_prefill 16
  sweep cpasync variant_cpasync/l2kv_bench_prefill 16
  sweep head l2kv_bench_prefill 32
  sweep head l2kv_bench_prefill 64
done
if (( SECONDS < 330 )); then
  echo "== mixed split split:off split:on:1" >> $OUT/steady.log
  timeout 90 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 16 \
    --steady-chunk 0 2048 --steady-reps 10 --profile --variants split split:off split:on:1 >> $OUT/steady.log 2>&1
  echo "mixed rc=$? at $SECONDS s" >> $OUT/summary.txt
fi
if (( SECONDS < 380 )); then
  L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 90 build/l2kv_tests --gtest_brief=1 --gtest_filter='CudaModel.*' > $OUT/tests.log 2>&1
  echo "tests head rc=$? at $SECONDS s" >> $OUT/summary.txt
  grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure|wgmma mixed" $OUT/tests.log | head -20 >> $OUT/summary.txt
fi
for v in lazy cpasync; do
  (( SECONDS < 470 )) || break
  L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 50 build/variant_$v/l2kv_tests --gtest_brief=1 --gtest_filter='*PrefillAttention*:*PrefillWorkList*' > $OUT/tests_$v.log 2>&1
  echo "tests $v rc=$? at $SECONDS s" >> $OUT/summary.txt
  grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests_$v.log | head -10 >> $OUT/summary.txt
done
if (( SECONDS < 520 )); then
  echo "== decode profile" >> $OUT/steady.log
  timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 64 --steady-reps 20 --profile --variants split >> $OUT/steady.log 2>&1
  echo "profile rc=$? at $SECONDS s" >> $OUT/summary.txt
fi
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests*.log
cat $OUT/summary.txt
grep -E "^==|wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/' | head -60
grep -E "^==|chunk=|split_decode_kernel|prefill_wgmma" $OUT/steady.log | head -30
