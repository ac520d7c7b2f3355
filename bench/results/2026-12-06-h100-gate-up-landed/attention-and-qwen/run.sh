#!/usr/bin/env bash
# The split kernel alone at llama3-8b heads, context 1024, batch 64 and 256 (HND, block 16,
# cold and in a graph): the planner's slicing against forced slice lengths; then PyTorch SDPA
# (cuDNN, flash) on contiguous KV of the same sizes; qwen2.5-7b steps with cuBLASLt's two searches.
set -u
source build/setup_gpu.sh
cp build/run119.sh $OUT/run.sh
for t in 0 2 4 8 16; do
  timeout 60 build/l2kv_bench_decode --models llama3-8b --batches 64 256 --contexts 1024 --block-sizes 16 --layouts HND --v1-prefetch none --split-prefetch off --split-tiles $t --graph-timing --reps 30 --json $OUT/split_t$t.json > $OUT/split_t$t.log 2>&1
  echo "split tiles $t rc=$? at $SECONDS s" >> $OUT/summary.txt
done
timeout 120 python3 bench/attention/sdpa_peers.py --models llama3-8b --batches 64 256 --contexts 1024 --reps 30 --json $OUT/sdpa.json > $OUT/sdpa.log 2>&1
echo "sdpa rc=$? at $SECONDS s" >> $OUT/summary.txt
# qwen2.5-7b at 64-256 rows: cuBLASLt's heuristic against the wide search, alternated.
for r in 1 2; do for g in heuristic wide; do
  echo "== qwen2.5-7b --gemm-tuning $g" >> $OUT/qwen.log
  timeout 120 build/l2kv bench --model synthetic:qwen2.5-7b --variants split --mode steady --steady-reps 20 --steady-batch 64 128 256 --gemm-tuning $g >> $OUT/qwen.log 2>&1
  echo "qwen $g rc=$? at $SECONDS s" >> $OUT/summary.txt
done; done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^==|^steady" $OUT/qwen.log | sed 's/  */ /g' | cut -c1-100
grep -hE "split|B=" $OUT/split_t*.log | cut -c1-160 | head -30
tail -8 $OUT/sdpa.log
