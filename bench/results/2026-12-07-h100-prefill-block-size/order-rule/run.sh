#!/usr/bin/env bash
# The prefill work items' order bucket as an eighth of the longest end (256 keys at least)
# against baseline/ (1,024 keys always, the tree before): prefill, work-list, model-fixture and
# CudaModel GPU tests; the attention sweep (1K-32K tokens, one and four prompts, KV blocks of
# 32 tokens) and the first token of 8K and 32K-token prompts, alternated twice.
set -u
source build/setup_gpu.sh
cp build/run06.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 120 build/l2kv_tests --gtest_brief=1 --gtest_filter='*PrefillAttention*:*PrefillWorkList*:Fixtures/CudaModelFixture.*:CudaModel.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head -10 >> $OUT/summary.txt
for r in 1 2; do
  for b in baseline/l2kv_bench_prefill l2kv_bench_prefill; do
    echo "== $b" >> $OUT/sweep.log
    timeout 45 build/$b --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 --attention-block-size 32 >> $OUT/sweep.log 2>&1
    echo "sweep $b rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
  for b in baseline/l2kv l2kv; do
    (( SECONDS < 330 )) || break
    echo "== ttft $b" >> $OUT/ttft.log
    for n in 8000 32000; do
      timeout 40 build/$b bench --model synthetic:llama3-8b --mode e2e --variants split --input-len $n --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 2>&1 | tr '\r' '\n' | grep -iE "ttft|error" >> $OUT/ttft.log
    done
    echo "ttft $b at $SECONDS s" >> $OUT/summary.txt
  done
done
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log
cat $OUT/summary.txt
grep -E "^==|wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/; s/, 32:8 heads, block 32//'
cat $OUT/ttft.log
