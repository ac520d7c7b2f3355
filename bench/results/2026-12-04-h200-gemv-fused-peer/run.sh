#!/usr/bin/env bash
# l2kv_bench_gemv with the fused forms (all three models, 1-128 rows, cold L2), then steady
# steps of this build and the compiled-PyTorch peer at batch 1 and 16 in the same run.
set -u
source build/setup_gpu.sh
cp build/run11.sh $OUT/run.sh
timeout 240 build/l2kv_bench_gemv --reps 30 --json $OUT/gemv.json > $OUT/gemv.log 2>&1
echo "gemv rc=$? at $SECONDS s"
grep -E "rows:|^llama3-8b +(qkv|gate_up) .* (1|16) \|" $OUT/gemv.log | head -30
S="--mode steady --steady-context 1024 --variants split --steady-reps 30"
timeout 40 build/l2kv bench --model synthetic:llama3-8b $S --steady-batch 1 16 > $OUT/steady.log 2>&1
grep -E "^steady" $OUT/steady.log
C=$(grep -oE "ceiling [0-9]+ GB/s" $OUT/steady.log | head -1 | awk "{print \$2}")
left=$((560 - SECONDS))
if [ $left -gt 100 ]; then
  timeout $left python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 16 --context 1024 ${C:+--ceiling-gbps $C} --time-budget-s $((left - 10)) > $OUT/peer.log 2>&1
  grep -E "step|points" $OUT/peer.log
  timeout 40 build/l2kv bench --model synthetic:llama3-8b $S --steady-batch 1 16 2>&1 | grep -E "^steady" > $OUT/steady_after_peer.log
  cat $OUT/steady_after_peer.log
fi
echo "all done at $SECONDS s"
