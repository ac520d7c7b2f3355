#!/usr/bin/env bash
# Issue 17's ratio on the same H100 as run142: l2kv (the register form as before:
# L2KV_EXP_GEMV_WARP_TILES=0) at 1-256 rows, the compiled-PyTorch peer at 64 and 128, l2kv again.
set -u
source build/setup_gpu.sh
cp build/run143.sh $OUT/run.sh
export L2KV_EXP_GEMV_WARP_TILES=0
timeout 60 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 20 --steady-batch 1 16 64 128 256 > $OUT/steady.log 2>&1
echo "steady rc=$? at $SECONDS s" >> $OUT/summary.txt
C=$(grep -oE "ceiling [0-9]+" $OUT/steady.log | head -1 | grep -oE "[0-9]+")
timeout 170 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 64 128 --context 1024 ${C:+--ceiling-gbps $C} --time-budget-s 160 --json $OUT/peer.json > $OUT/peer.log 2>&1
echo "peer rc=$? at $SECONDS s" >> $OUT/summary.txt
timeout 60 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 20 --steady-batch 1 16 64 128 256 >> $OUT/steady.log 2>&1
echo "steady again rc=$? at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^steady|ceiling" $OUT/steady.log | sed 's/  */ /g'
grep -E "step|points" $OUT/peer.log | tail -4
