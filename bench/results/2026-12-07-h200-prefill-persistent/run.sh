#!/usr/bin/env bash
# Prefill attention on persistent blocks (one per SM, items in snake order) against baseline/
# (1d53758: a block per item, the same kernel otherwise): prefill, model-fixture, rope and fp8
# KV tests; the kernel sweep alternated twice; the whole prefill of 8 x 512; time to first token
# of a 32K prompt; memcheck and racecheck; the SDPA peers. Then a mixed step's eager time with
# and without CUPTI (--profile), and issue 17's steady steps on three models.
set -u
source build/setup_gpu.sh
cp build/run159.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 120 build/l2kv_tests --gtest_brief=1 --gtest_filter='*PrefillAttention*:*PrefillWorkList*:Fixtures/CudaModelFixture.*:*/ModelOps.RopeAndCacheMatchesHostReference/*:*RopeCache*:*Fp8FusedOps*:*Fp8KvCache*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head -20 >> $OUT/summary.txt
sweep() {  # binary
  echo "== $1" >> $OUT/sweep.log
  timeout 40 build/$1 --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 >> $OUT/sweep.log 2>&1
  echo "sweep $1 rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do
  sweep baseline/l2kv_bench_prefill
  sweep l2kv_bench_prefill
done
for b in baseline/l2kv_bench_prefill l2kv_bench_prefill; do
  echo "== $b" >> $OUT/prefill.log
  timeout 30 build/$b --reps 5 --attention-lengths 512 --attention-prompts 1 >> $OUT/prefill.log 2>&1
  echo "whole $b rc=$? at $SECONDS s" >> $OUT/summary.txt
done
for b in baseline/l2kv l2kv; do
  echo "== ttft $b 32000" >> $OUT/prefill.log
  timeout 30 build/$b bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 32000 --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 2>&1 | tr '\r' '\n' | grep -iE "ttft|e2e |error" >> $OUT/prefill.log
  echo "ttft $b at $SECONDS s" >> $OUT/summary.txt
done
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck; do
  echo "### $tool" >> $OUT/sanitizer.log
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 40 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_brief=1 --gtest_filter='AllShapes/PrefillAttentionGrid.MatchesReference/bf16_d128_g4_b16_HND:AllBlockSizes/PrefillAttentionBoundaries.MatchesReference/fp16_d128_b32_NHD' >> $OUT/sanitizer.log 2>&1
  echo "$tool rc=$? at $SECONDS s" >> $OUT/summary.txt
done
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer.log >> $OUT/summary.txt
if (( SECONDS < 200 )); then
  timeout 60 python3 bench/model/sdpa_prefill_peers.py --lengths 1024 8192 32768 --prompts 1 --json $OUT/sdpa.json > $OUT/peers.log 2>&1
  echo "sdpa rc=$? at $SECONDS s" >> $OUT/summary.txt
  rm -f $OUT/sdpa.json
fi
for p in plain profile; do
  (( SECONDS < 250 )) || break
  flag=""; [[ $p == profile ]] && flag="--profile"
  echo "== mixed $p" >> $OUT/steady.log
  timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 16 \
    --steady-chunk 0 2048 --variants split --steady-reps 10 $flag >> $OUT/steady.log 2>&1
  echo "mixed $p rc=$? at $SECONDS s" >> $OUT/summary.txt
done
if (( SECONDS < 280 )); then  # lazy module loading off: does the gap after the embedding go?
  echo "== mixed plain, CUDA_MODULE_LOADING=EAGER" >> $OUT/steady.log
  CUDA_MODULE_LOADING=EAGER timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 16 \
    --steady-chunk 0 2048 --variants split --steady-reps 10 >> $OUT/steady.log 2>&1
  echo "mixed eager-loading rc=$? at $SECONDS s" >> $OUT/summary.txt
fi
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1)
if [[ -n $NSYS ]] && (( SECONDS < 290 )); then  # the host's CUDA calls in mixed steps
  echo "== nsys $NSYS" >> $OUT/steady.log
  timeout 80 $NSYS profile -t cuda,osrt -o /tmp/mixed --force-overwrite true build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 16 \
    --steady-chunk 0 2048 --variants split --steady-reps 10 > /dev/null 2>&1
  timeout 40 $NSYS stats --report cuda_api_sum,osrt_sum --format csv /tmp/mixed.nsys-rep 2>&1 | head -60 >> $OUT/steady.log
  echo "nsys at $SECONDS s" >> $OUT/summary.txt
fi
for model in llama3-8b qwen2.5-7b llama2-7b; do
  batches="1 16 64 128 256"
  [[ $model == llama2-7b ]] && batches="1 16 64"  # 128 rows of its KV do not fit beside the weights
  for b in l2kv; do
    (( SECONDS < 330 )) || break 2
    echo "== $b $model" >> $OUT/steady.log
    timeout 60 build/$b bench --model synthetic:$model --mode steady --steady-batch $batches --steady-context 1024 --variants split --steady-reps 30 2>&1 | grep -E "steady|ceiling" >> $OUT/steady.log
    echo "$b $model at $SECONDS s" >> $OUT/summary.txt
  done
done
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log $OUT/sanitizer.log
cat $OUT/summary.txt
grep -E "^==|wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/' | head -40
grep -iE "==|prefill:|time split|ttft" $OUT/prefill.log | head -20
grep -E "cudnn|flash" $OUT/peers.log | head -10
