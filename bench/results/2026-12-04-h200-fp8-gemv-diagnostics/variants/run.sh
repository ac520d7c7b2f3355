#!/usr/bin/env bash
# fp8 fused GEMV variants (L2KV_EXP: qkvmt nb3 nb3u2 u2 mt4 st3): isolated and in the batch-1 step; ncu stalls of gate_up.
set -u
source build/setup_gpu.sh
cp build/run66.sh $OUT/run.sh
G=build/exp_gemv
for v in base qkvmt nb3 nb3u2 u2 mt4 st3; do
  echo "== $v" >> $OUT/gemv.log
  L2KV_EXP=$v timeout 60 $G --models llama3-8b-fp8 --rows 1 --reps 100 >> $OUT/gemv.log 2>&1; echo "$v rc=$?" >> $OUT/gemv.log
done
grep -aE "^== |fp8 .* 1 \||as a step" $OUT/gemv.log | cut -c1-20,80-125
B=build/exp_l2kv
for v in base qkvmt nb3 nb3u2 u2 mt4 st3 base qkvmt,nb3u2,st3 qkvmt,nb3,u2; do
  echo "== $v" >> $OUT/bench.log
  L2KV_EXP=$v timeout 60 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 --steady-context 1024 >> $OUT/bench.log 2>&1; echo "$v rc=$?" >> $OUT/bench.log
done
grep -aE "^== |^steady|rc=[1-9]|rror" $OUT/bench.log | sed 's/.*\r//'
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
M="regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio,dram__bytes_read.sum,lts__t_sectors_srcunit_tex_op_read.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,sm__inst_executed.sum,smsp__inst_executed_op_ldgsts.sum,gpu__time_duration.sum,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum"
for m in llama3-8b-fp8 llama3-8b; do
  timeout 100 $NCU --clock-control none --kernel-name regex:gemv_kernel --launch-skip 6 --launch-count 1 --metrics "$M" $G --models $m --rows 1 --reps 2 --no-graph >> $OUT/ncu.log 2>&1; echo "ncu $m rc=$?" >> $OUT/ncu.log
done
grep -E "gemv_kernel<|stalled|dram__|duration|rc=" $OUT/ncu.log | awk '$NF+0 > 0.05 || /gemv|rc=/' | cut -c1-140
