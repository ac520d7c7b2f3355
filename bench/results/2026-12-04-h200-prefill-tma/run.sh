#!/usr/bin/env bash
# The wgmma prefill kernel's TMA variant (bench/experiments/prefill_wgmma_warp_specialized.patch:
# K/V tiles by 4D TMA boxes per KV block, one producer warp, ping-pong consumers) against the
# lockstep kernel l2kv runs: tests with the variant switched in, then the attention sweep.
set -u
source build/setup_gpu.sh
cp build/run25.sh $OUT/run.sh
L2KV_PREFILL_VARIANT=tma L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='*Prefill*' > $OUT/gpu_tests_tma.log 2>&1; echo "tests tma rc=$?" | tee -a $OUT/gpu_tests_tma.log
grep -E "^\[  FAILED|PASSED|Failure" $OUT/gpu_tests_tma.log | head -8
echo "tests done at $SECONDS s"
A="--batch 1 --prompt 512 --reps 2 --attention-prompts 1 4 --attention-lengths 1024 4096 8192 32768"
for rep in 1 2; do
  for v in lockstep tma; do
    echo "### $v" >> $OUT/variants.log
    L2KV_PREFILL_VARIANT=$v timeout 60 build/l2kv_bench_prefill $A 2>&1 | grep "prefill attention" >> $OUT/variants.log
  done
done
cat $OUT/variants.log | sed -e 's/prefill attention, //' -e 's/, 32:8 heads//' -e 's/; max diff.*//'
echo "all done at $SECONDS s"
