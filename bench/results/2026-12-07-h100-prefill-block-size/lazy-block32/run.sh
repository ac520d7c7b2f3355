#!/usr/bin/env bash
# Lazy rescaling in the wgmma prefill kernel and KV blocks of 32 tokens by default: GPU tests of
# the prefill kernel, models, runner and engine (now at 32-token blocks), memcheck and racecheck
# of the prefill kernel; the attention sweep at blocks of 16 and 32 tokens, alternated; the SDPA
# peers (cuDNN, flash) in the same run.
set -u
source build/setup_gpu.sh
cp build/run02.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 200 build/l2kv_tests --gtest_brief=1 --gtest_filter='*PrefillAttention*:*PrefillWorkList*:Fixtures/CudaModelFixture.*:CudaModel.*:Variants/CudaEngine*:CudaEngineSingle.*:*CudaRunner*:*PrefixCach*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure|tests ran" $OUT/tests.log | head -30 >> $OUT/summary.txt
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck; do
  echo "### $tool" >> $OUT/sanitizer.log
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 50 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_brief=1 --gtest_filter='AllShapes/PrefillAttentionGrid.MatchesReference/bf16_d128_g4_b16_HND:AllBlockSizes/PrefillAttentionBoundaries.MatchesReference/fp16_d128_b32_NHD' >> $OUT/sanitizer.log 2>&1
  echo "$tool rc=$? at $SECONDS s" >> $OUT/summary.txt
done
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer.log >> $OUT/summary.txt
for r in 1 2; do
  for b in 16 32; do
    (( SECONDS < 420 )) || break 2
    echo "== block $b" >> $OUT/sweep.log
    timeout 45 build/l2kv_bench_prefill --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 --attention-block-size $b >> $OUT/sweep.log 2>&1
    echo "sweep $b rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
if (( SECONDS < 480 )); then
  timeout 80 python3 bench/model/sdpa_prefill_peers.py --lengths 1024 2048 8192 32768 --prompts 1 4 --json $OUT/sdpa.json > $OUT/peers.log 2>&1
  echo "sdpa rc=$? at $SECONDS s" >> $OUT/summary.txt
fi
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log $OUT/sanitizer.log
cat $OUT/summary.txt
grep -E "^==|wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/' | head -40
grep -E "cudnn|flash" $OUT/peers.log | head -20
