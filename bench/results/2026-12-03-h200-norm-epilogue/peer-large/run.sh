#!/usr/bin/env bash
# The compiled-PyTorch peer at batch 64 / 128 / 256 between two l2kv runs (build f7c95ec).
set -u
source build/setup_gpu.sh
log() { echo "$(date +%T) $*" >> $OUT/timeline.txt; }
S="build/prev/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 50 --steady-batch 64 128 256"
timeout 60 $S 2>&1 | grep -E "^steady|ceiling" > $OUT/steady_before_peer.log
C=$(grep -o "ceiling [0-9]*" $OUT/steady_before_peer.log | head -1 | awk '{print $2}')
log l2kv
cat $OUT/steady_before_peer.log
timeout 200 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 64 128 256 --context 1024 --ceiling-gbps ${C:-4550} --time-budget-s 180 > $OUT/peer.log 2>&1; echo "peer rc=$?" >> $OUT/peer.log
log peer
grep -E "step|rc=|batch" $OUT/peer.log | grep -v compiling | tail -12
timeout 60 $S 2>&1 | grep -E "^steady|ceiling" > $OUT/steady_after_peer.log
log l2kv2
cat $OUT/steady_after_peer.log $OUT/timeline.txt
