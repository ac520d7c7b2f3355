#!/usr/bin/env bash
# Where the wgmma prefill attention kernel stalls: Nsight Compute's full set on one 8K-token
# causal launch (llama3-8b heads), with per-instruction stall samples; and ablations of an
# experiment build (variant/: L2KV_EXP_PREFILL_ABLATE 1 = V copied for the first two tiles only,
# 2 = no K/V copies after the first two tiles, 3 = no exp2 in the softmax, 4 = no P x V MMAs;
# outputs wrong by design) timed in the kernel sweep beside the kernel as committed.
set -u
source build/setup_gpu.sh
cp build/run146.sh $OUT/run.sh
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
echo "ncu: $NCU" >> $OUT/summary.txt
sweep() {  # binary, ablation
  echo "== $1 ablate=$2" >> $OUT/sweep.log
  L2KV_EXP_PREFILL_ABLATE=$2 timeout 100 build/$1 --batch 1 --prompt 64 --reps 1 --attention-lengths 2048 8192 32768 --attention-prompts 1 4 >> $OUT/sweep.log 2>&1
  echo "sweep $1 $2 rc=$? at $SECONDS s" >> $OUT/summary.txt
}
sweep l2kv_bench_prefill 0
for a in 0 1 2 3 4; do sweep variant/l2kv_bench_prefill $a; done
timeout 240 $NCU --clock-control none -k regex:prefill_wgmma --launch-skip 70 -c 1 --set full --import-source yes -o $OUT/prefill build/l2kv_bench_prefill --batch 1 --prompt 64 --reps 1 --attention-lengths 8192 --attention-prompts 1 > $OUT/ncu_run.log 2>&1
echo "ncu rc=$? at $SECONDS s" >> $OUT/summary.txt
$NCU -i $OUT/prefill.ncu-rep --page details > $OUT/details.txt 2>&1
$NCU -i $OUT/prefill.ncu-rep --page source --csv --print-source sass > $OUT/sass.csv 2>&1
echo "export rc=$? at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^==|wgmma|TFLOP" $OUT/sweep.log | head -60
grep -E "Duration|Throughput|Issue|Eligible|Warp Cycles|Registers|Achieved|L2 Hit|Mem Busy|Max Bandwidth" $OUT/details.txt | head -40
wc -c $OUT/*.csv
gzip $OUT/sass.csv $OUT/details.txt $OUT/sweep.log
