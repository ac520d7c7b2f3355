#!/usr/bin/env bash
# KV block size 16 / 32 / 64 and the split kernel's L2 prefetch (auto / off) at 64, 128, 256 rows
# (synthetic llama3-8b, context 1024, steady), alternated twice.
set -u
source build/setup_gpu.sh
cp build/run117.sh $OUT/run.sh
st() { echo "== $*" >> $OUT/steady.log; timeout 90 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 20 --steady-batch 64 128 256 "$@" >> $OUT/steady.log 2>&1; echo "steady $* rc=$? at $SECONDS s" >> $OUT/summary.txt; }
for r in 1 2; do
  for b in 16 32 64; do st --block-size $b; done
  st --kv-prefetch off
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-90
