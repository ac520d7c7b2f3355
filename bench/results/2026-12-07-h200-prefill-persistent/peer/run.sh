#!/usr/bin/env bash
# Issue 17 at batch 1 and 64 on this H200: the compiled-PyTorch peer, then l2kv (same machine,
# after ../engine-tests/run.sh).
source build/setup_gpu.sh >/dev/null 2>&1; timeout 170 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 64 --context 1024 --time-budget-s 120 --json $OUT/peer.json > $OUT/peer.log 2>&1; echo "peer rc=$? at $SECONDS"; tail -6 $OUT/peer.log; timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 64 --steady-context 1024 --variants split --steady-reps 30 2>&1 | grep steady > $OUT/after_peer.log; cat $OUT/after_peer.log
