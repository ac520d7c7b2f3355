#!/usr/bin/env bash
# The fused layer's weighted x for gate_up on an H200: steady base against it, alternated twice.
set -u
source build/setup_gpu.sh
cp build/run90.sh $OUT/run.sh
steady() {  # binary, log, model, batches...
  local bin=$1 log=$2 model=$3; shift 3
  echo "== $bin $model" >> $OUT/$log
  timeout 60 build/$bin bench --model synthetic:$model --mode steady --variants split --steady-batch "$@" --steady-reps 10 >> $OUT/$log 2>&1
  echo "$log $bin $model rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for b in base_l2kv l2kv; do steady $b steady.log llama3-8b 1 16 64; done; done
for b in base_l2kv l2kv; do steady $b steady.log qwen2.5-7b 1; steady $b steady.log llama2-7b 1; done
for b in base_l2kv l2kv; do steady $b profile.log llama3-8b 1 --profile; done
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-110
grep -E "==|    (qkv|gate_up|down|lm_head|o) " $OUT/profile.log
