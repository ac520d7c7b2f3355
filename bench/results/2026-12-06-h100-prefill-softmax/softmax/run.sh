#!/usr/bin/env bash
# The lockstep wgmma prefill kernel with one FFMA + EX2 per softmax weight and the block-table
# entries looked up a tile ahead: prefill attention and model fixture tests; the kernel sweep
# against the committed kernel (baseline/) and the experiment's TMA + ping-pong form (variant/,
# L2KV_PREFILL_VARIANT=tma), alternated; Nsight Compute stall samples of the new kernel and of
# the TMA form at one 8K prompt.
set -u
source build/setup_gpu.sh
cp build/run147.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 150 build/l2kv_tests --gtest_brief=1 --gtest_filter='*PrefillAttention*:*PrefillWorkList*:Fixtures/CudaModelFixture.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
sweep() {  # binary, variant
  echo "== $1 $2" >> $OUT/sweep.log
  L2KV_PREFILL_VARIANT=$2 timeout 100 build/$1 --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 >> $OUT/sweep.log 2>&1
  echo "sweep $1 $2 rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do
  sweep baseline/l2kv_bench_prefill lockstep
  sweep l2kv_bench_prefill lockstep
  sweep variant/l2kv_bench_prefill tma
done
NCU=/usr/local/cuda/bin/ncu
prof() {  # name, binary, variant
  L2KV_PREFILL_VARIANT=$3 timeout 120 $NCU --clock-control none -k regex:prefill_wgmma --launch-skip 70 -c 1 --set full --import-source yes -o $OUT/$1 build/$2 --batch 1 --prompt 64 --reps 1 --attention-lengths 8192 --attention-prompts 1 > /dev/null 2>&1
  echo "ncu $1 rc=$? at $SECONDS s" >> $OUT/summary.txt
  $NCU -i $OUT/$1.ncu-rep --page details > $OUT/$1_details.txt 2>&1
  $NCU -i $OUT/$1.ncu-rep --page source --csv --print-source sass > $OUT/$1_sass.csv 2>&1
  rm -f $OUT/$1.ncu-rep
}
prof new l2kv_bench_prefill lockstep
prof tma variant/l2kv_bench_prefill tma
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head
grep -E "^==|wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/' | head -60
for f in new tma; do echo "-- $f"; grep -E "Duration|Issue Slots|Eligible Warps|L2 Cache Throughput|Registers Per" $OUT/${f}_details.txt | head -8; done
tar -czf $OUT/ncu.tar.gz -C $OUT new_details.txt new_sass.csv tma_details.txt tma_sass.csv && rm $OUT/*_details.txt $OUT/*_sass.csv
gzip $OUT/tests.log $OUT/sweep.log
