#!/usr/bin/env bash
# The warp-specialized wgmma prefill kernel (a copying warpgroup, mbarrier rings):
# against the warp-MMA kernel and the SDPA peers, and time to first token at 1K/8K/32K.
set -u
source build/setup_gpu.sh
cp build/run17.sh $OUT/run.sh
F='*Prefill*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*'
L2KV_REQUIRE_GPU=1 timeout 240 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran|Failure|mismatch" $OUT/gpu_tests.log | head -30
echo "tests done at $SECONDS s"
L2KV_SKIP_BUILD=1 timeout 200 ./scripts/bench_prefill.sh > $OUT/bench_prefill.out 2>&1; echo "bench_prefill rc=$?"
grep -E "prefill|SDPA" $OUT/bench_prefill.out | head -40
echo "prefill done at $SECONDS s"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck synccheck; do
  echo "### $tool" >> $OUT/sanitizer.log
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 60 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='AllShapes/PrefillAttentionGrid.MatchesReference/bf16_d128_g4_b16_HND:AllBlockSizes/PrefillAttentionBoundaries.MatchesReference/fp16_d128_b32_NHD' >> $OUT/sanitizer.log 2>&1
  echo "$tool rc=$?" | tee -a $OUT/sanitizer.log; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/sanitizer.log | tail -2
done
echo "sanitizers done at $SECONDS s"
for len in 1024 8192 32000; do
  timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len $len --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 >> $OUT/ttft.log 2>&1
  echo "ttft $len rc=$? at $SECONDS s"
done
grep -iE "ttft|e2e " $OUT/ttft.log | tail -6
tar -czf $OUT/prefill_results.tgz bench/results/*-prefill
echo "all done at $SECONDS s"
