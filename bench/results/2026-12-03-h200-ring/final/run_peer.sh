#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
log() { echo "$(date +%T) $*" >> $OUT/timeline.txt; }
S="build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 50 --steady-batch 1 16"
timeout 60 $S 2>&1 | grep -E "^steady|ceiling" > $OUT/steady_before_peer.log
C=$(grep -o "ceiling [0-9]*" $OUT/steady_before_peer.log | head -1 | awk '{print $2}')
log l2kv
timeout 260 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 16 --context 1024 --ceiling-gbps ${C:-4550} --time-budget-s 240 > $OUT/peer.log 2>&1; echo "peer rc=$?" >> $OUT/peer.log
log peer
timeout 60 $S 2>&1 | grep -E "^steady|ceiling" > $OUT/steady_after_peer.log
log l2kv2
timeout 150 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 512 --output-len 128 --concurrency 1 16 64 2>&1 | tr "\r" "\n" | grep -E "^e2e|TTFT|ttft" > $OUT/e2e.log
log e2e
cat $OUT/steady_before_peer.log; grep -E "step|rc=" $OUT/peer.log | grep -v compiling; cat $OUT/steady_after_peer.log $OUT/e2e.log
