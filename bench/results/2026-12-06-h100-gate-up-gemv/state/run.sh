#!/usr/bin/env bash
# Issue 17's numbers on one card, and the gate_up-on-GEMV experiment: steady decode (context
# 1024) of llama3-8b, qwen2.5-7b, llama2-7b; variant/l2kv (bench/experiments/
# fused_gate_up_gemv_rows.patch) without and with L2KV_EXP_GATE_UP_GEMV_ROWS=16 alternated at 2-16
# rows; a profile at 64 rows; KV blocks of 32 tokens; the compiled-PyTorch peer at 1, 16 and 64
# rows, with l2kv's llama3-8b steps before and after it.
set -u
source build/setup_gpu.sh
cp build/run109.sh $OUT/run.sh
steady() {  # log, binary, model, args...
  local log=$1 bin=$2 model=$3; shift 3
  echo "== $bin $model $* ${EXP:-}" >> $OUT/$log
  timeout 150 env ${EXP:-} build/$bin bench --model synthetic:$model --variants split --mode steady --steady-reps 20 "$@" >> $OUT/$log 2>&1
  echo "$log $bin $model $* ${EXP:-} rc=$? at $SECONDS s" >> $OUT/summary.txt
}
EXP= steady steady.log l2kv llama3-8b --steady-batch 1 16 64 128 256
EXP= steady steady.log l2kv qwen2.5-7b --steady-batch 1 16 64 128 256
EXP= steady steady.log l2kv llama2-7b --steady-batch 1 16 64 128
C=$(grep -oE "ceiling [0-9]+" $OUT/steady.log | head -1 | grep -oE "[0-9]+")
left=$((330 - SECONDS))
timeout $left python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 16 64 --context 1024 ${C:+--ceiling-gbps $C} --time-budget-s $((left - 20)) --json $OUT/peer.json > $OUT/peer.log 2>&1
echo "peer rc=$? at $SECONDS s" >> $OUT/summary.txt
EXP= steady steady.log l2kv llama3-8b --steady-batch 1 16 64 128 256
cat $OUT/gpu.txt $OUT/summary.txt
for f in steady; do grep -hE "^==|^steady" $OUT/$f.log | sed 's/  */ /g' | cut -c1-110; done
grep -E "step|points" $OUT/peer.log | tail -6
