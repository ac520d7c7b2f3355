#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
cp build/run112.sh $OUT/run.sh
steady() { local log=$1 bin=$2 model=$3; shift 3; echo "== $bin $model $* ${EXP:-}" >> $OUT/$log; timeout 100 env ${EXP:-} build/$bin bench --model synthetic:$model --variants split --mode steady --steady-reps 20 "$@" >> $OUT/$log 2>&1; }
for r in 1 2; do for m in llama2-7b qwen2.5-7b llama3-8b; do
  EXP= steady rows.log variant/l2kv $m --steady-batch 10 12 14
  EXP=L2KV_EXP_GATE_UP_GEMV_ROWS=16 steady rows.log variant/l2kv $m --steady-batch 10 12 14
done; done
cat $OUT/gpu.txt
grep -hE "^==|^steady" $OUT/rows.log | sed 's/  */ /g' | cut -c1-100
