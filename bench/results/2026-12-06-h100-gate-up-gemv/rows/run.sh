#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
cp build/run111.sh $OUT/run.sh
steady() { local log=$1 bin=$2 model=$3; shift 3; echo "== $bin $model $* ${EXP:-}" >> $OUT/$log; timeout 100 env ${EXP:-} build/$bin bench --model synthetic:$model --variants split --mode steady --steady-reps 20 "$@" >> $OUT/$log 2>&1; echo "$log $bin $model $* ${EXP:-} rc=$? at $SECONDS s" >> $OUT/summary.txt; }
for r in 1 2; do
  EXP= steady rows.log variant/l2kv llama3-8b --steady-batch 1 2 4 8 12 16
  EXP=L2KV_EXP_GATE_UP_GEMV_ROWS=16 steady rows.log variant/l2kv llama3-8b --steady-batch 1 2 4 8 12 16
done
EXP= steady rows.log variant/l2kv qwen2.5-7b --steady-batch 2 4 8 16
EXP=L2KV_EXP_GATE_UP_GEMV_ROWS=16 steady rows.log variant/l2kv qwen2.5-7b --steady-batch 2 4 8 16
EXP= steady rows.log variant/l2kv llama2-7b --steady-batch 2 4 8 16
EXP=L2KV_EXP_GATE_UP_GEMV_ROWS=16 steady rows.log variant/l2kv llama2-7b --steady-batch 2 4 8 16
cat $OUT/gpu.txt
grep -hE "^==|^steady" $OUT/rows.log | sed 's/  */ /g' | cut -c1-110
