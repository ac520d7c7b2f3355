#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
cp build/run110.sh $OUT/run.sh
steady() { local log=$1 bin=$2 model=$3; shift 3; echo "== $bin $model $* ${EXP:-}" >> $OUT/$log; timeout 100 env ${EXP:-} build/$bin bench --model synthetic:$model --variants split --mode steady --steady-reps 20 "$@" >> $OUT/$log 2>&1; echo "$log $bin $model $* ${EXP:-} rc=$? at $SECONDS s" >> $OUT/summary.txt; }
EXP= steady steady.log l2kv llama3-8b --steady-batch 64 128
EXP= steady steady.log l2kv llama3-8b --steady-batch 64 128 --gemm-tuning wide
EXP= steady profile.log l2kv llama3-8b --steady-batch 64 --profile
EXP= steady rows.log variant/l2kv llama3-8b --steady-batch 2 8 16
EXP=L2KV_EXP_GATE_UP_GEMV_ROWS=16 steady rows.log variant/l2kv llama3-8b --steady-batch 2 8 16
timeout 120 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 128 --context 1024 --ceiling-gbps 3125 --time-budget-s 100 --json $OUT/peer.json > $OUT/peer.log 2>&1
echo "peer rc=$? at $SECONDS s" >> $OUT/summary.txt
EXP= steady steady.log l2kv llama3-8b --steady-batch 64 128
cat $OUT/gpu.txt $OUT/summary.txt
for f in steady rows; do grep -hE "^==|^steady" $OUT/$f.log | sed 's/  */ /g' | cut -c1-110; done
grep -hE "ceiling|%" $OUT/profile.log | head -30
grep -E "step|points" $OUT/peer.log | tail -3
