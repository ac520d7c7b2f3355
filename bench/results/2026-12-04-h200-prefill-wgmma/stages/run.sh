#!/usr/bin/env bash
# wgmma prefill kernel: two K/V stages (a barrier at both ends of each tile) against three (one
# barrier per tile); ncu stall reasons of the two-stage kernel at 8K.
set -u
source build/setup_gpu.sh
cp build/run18.sh $OUT/run.sh
L2KV_PREFILL_STAGES=3 L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 120 build/l2kv_tests --gtest_filter='*Prefill*' > $OUT/gpu_tests_stages3.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests_stages3.log
grep -E "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests_stages3.log | head
A="--batch 1 --prompt 512 --reps 2 --attention-prompts 1 4 --attention-lengths 1024 4096 8192 32768"
for rep in 1 2; do
  for st in 2 3; do
    echo "### stages $st" >> $OUT/stages.log
    L2KV_PREFILL_STAGES=$st timeout 60 build/l2kv_bench_prefill $A 2>&1 | grep "prefill attention" >> $OUT/stages.log
  done
done
cat $OUT/stages.log
echo "bench done at $SECONDS s"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
if [ -n "$NCU" ]; then
  for st in 2 3; do
  L2KV_PREFILL_STAGES=$st timeout 150 $NCU -k regex:prefill_wgmma --launch-skip 66 -c 1 --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section Occupancy build/l2kv_bench_prefill --batch 1 --prompt 16 --reps 1 --attention-prompts 1 --attention-lengths 8192 > $OUT/ncu_stages$st.log 2>&1
  echo "ncu rc=$?"; grep -E "Duration|Throughput|Stall|Issue|Warp Cycles|Pipe|L2|Eligible" $OUT/ncu_stages$st.log | head -40
  done
fi
echo "all done at $SECONDS s"
