#!/usr/bin/env bash
# Prefill attention with a TMA producer warp and two ping-pong consumer warpgroups, against the
# committed lockstep kernel (baseline/): prefill and model fixture GPU tests, the kernel sweep
# (alternated twice), the whole prefill of 8 x 512 against cuBLASLt, time to first token of a
# 32K prompt, compute-sanitizer memcheck and racecheck.
set -u
source build/setup_gpu.sh
cp build/run155.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 80 build/l2kv_tests --gtest_brief=1 --gtest_filter='*PrefillAttention*:*PrefillWorkList*:Fixtures/CudaModelFixture.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
sweep() {  # binary
  echo "== $1" >> $OUT/sweep.log
  timeout 30 build/$1 --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 >> $OUT/sweep.log 2>&1
  echo "sweep $1 rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do
  sweep baseline/l2kv_bench_prefill
  sweep l2kv_bench_prefill
done
for b in baseline/l2kv_bench_prefill l2kv_bench_prefill; do
  echo "== $b" >> $OUT/whole.log
  timeout 30 build/$b --reps 5 --attention-lengths 512 --attention-prompts 1 >> $OUT/whole.log 2>&1
  echo "whole $b rc=$? at $SECONDS s" >> $OUT/summary.txt
done
for b in baseline/l2kv l2kv; do
  echo "== $b 32000" >> $OUT/ttft.log
  timeout 30 build/$b bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 32000 --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 >> $OUT/ttft.log 2>&1
  echo "ttft $b rc=$? at $SECONDS s" >> $OUT/summary.txt
done
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck; do
  echo "### $tool" >> $OUT/sanitizer.log
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 30 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_brief=1 --gtest_filter='AllShapes/PrefillAttentionGrid.MatchesReference/bf16_d128_g4_b16_HND:AllBlockSizes/PrefillAttentionBoundaries.MatchesReference/fp16_d128_b32_NHD' >> $OUT/sanitizer.log 2>&1
  echo "$tool rc=$? at $SECONDS s" >> $OUT/summary.txt
done
if (( SECONDS < 400 )); then  # the peer the prefill kernel is measured against, same card
  timeout 60 python3 bench/model/sdpa_prefill_peers.py --lengths 1024 8192 32768 --prompts 1 --json $OUT/sdpa.json > $OUT/sdpa.log 2>&1
  echo "sdpa rc=$? at $SECONDS s" >> $OUT/summary.txt
fi
if (( SECONDS < 420 )); then  # a decode step beside a 2,048-token chunk
  timeout 60 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-batch 16 --steady-chunk 0 2048 --steady-reps 20 --profile > $OUT/mixed.log 2>&1
  echo "mixed rc=$? at $SECONDS s" >> $OUT/summary.txt
fi
if grep -q H200 $OUT/gpu.txt && (( SECONDS < 460 )); then  # issue 17's batch-1 bar is set on an H200
  timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 --steady-context 1024 --variants split --steady-reps 50 > $OUT/steady_b1.log 2>&1
  echo "steady b1 rc=$? at $SECONDS s" >> $OUT/summary.txt
  grep steady $OUT/steady_b1.log
fi
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head
grep -E "^==|wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/' | head -40
grep -iE "==|prefill:|time split" $OUT/whole.log | head -20
grep -iE "==|ttft|e2e " $OUT/ttft.log | head -30
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer.log
gzip $OUT/tests.log $OUT/sanitizer.log
grep -E "cudnn|flash" $OUT/sdpa.log | head -20
grep -E "steady|chunk" $OUT/mixed.log | cut -c1-160 | head -20
