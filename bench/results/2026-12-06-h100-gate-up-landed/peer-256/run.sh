#!/usr/bin/env bash
# 256 rows: l2kv steady, the compiled-PyTorch peer, l2kv again (synthetic llama3-8b, context 1024).
set -u
source build/setup_gpu.sh
cp build/run116.sh $OUT/run.sh
st() { timeout 90 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 20 --steady-batch 256 >> $OUT/steady.log 2>&1; echo "steady rc=$? at $SECONDS s" >> $OUT/summary.txt; }
st
timeout 300 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 256 --context 1024 --ceiling-gbps 3125 --time-budget-s 240 --json $OUT/peer.json > $OUT/peer.log 2>&1
echo "peer rc=$? at $SECONDS s" >> $OUT/summary.txt
st
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-100
tail -5 $OUT/peer.log
