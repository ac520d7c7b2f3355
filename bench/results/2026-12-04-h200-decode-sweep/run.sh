#!/usr/bin/env bash
# Decode attention at 1-32 sequences: the planner's slicing against forced slice lengths and
# L2 prefetch distances (llama3-8b and qwen2.5-7b heads, HND, block 16, as the engine runs).
set -u
source build/setup_gpu.sh
cp build/run10.sh $OUT/run.sh
for t in 0 1 2 4 8 16; do
  timeout 120 build/l2kv_bench_decode --models llama3-8b qwen2.5-7b --batches 1 4 16 32 64 --contexts 1024 4096 --block-sizes 16 --layouts HND --v1-prefetch none --split-prefetch off on:1 on:2 --graph-timing --reps 30 --split-tiles $t > $OUT/tiles$t.log 2>&1
  echo "tiles $t rc=$? at $SECONDS s"
done
grep -h "split" $OUT/tiles*.log | head -5
cd $OUT && tar -czf decode_sweep.tgz tiles*.log && rm tiles*.log
echo "all done at $SECONDS s"
