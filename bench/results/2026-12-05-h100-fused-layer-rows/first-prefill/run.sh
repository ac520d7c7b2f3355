#!/usr/bin/env bash
# Fifth run: a decode batch beside a 2,048-token chunk, fused layer up to 16 rows against 1, to
# find where the e2e prefill steps lose time with the fused layer on.
set -u
source build/setup_gpu.sh
cp build/run97.sh $OUT/run.sh
steady() {  # binary, log, model, args...
  local bin=$1 log=$2 model=$3; shift 3
  echo "== $bin $model $*" >> $OUT/$log
  timeout 90 build/$bin bench --model synthetic:$model --variants split "$@" >> $OUT/$log 2>&1
  echo "$log $bin $model $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for f in 16 1; do steady l2kv chunk.log llama3-8b --mode steady --steady-batch 4 16 --steady-chunk 2048 --steady-reps 5 --fused-layer-max-rows $f; done; done
for f in 16 1; do steady l2kv e2e.log llama3-8b --mode e2e --concurrency 4 --input-len 512 --output-len 16 --fused-layer-max-rows $f; done
for f in 16 1; do steady l2kv e2e.log llama3-8b --mode e2e --concurrency 1 --input-len 2048 --output-len 2 --fused-layer-max-rows $f; done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^==|^steady" $OUT/chunk.log | sed 's/  */ /g' | cut -c1-120
tr '\r' '\n' < $OUT/e2e.log | grep -E "^==|^e2e|per step" | sed 's/  */ /g' | cut -c1-170
