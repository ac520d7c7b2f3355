#!/usr/bin/env bash
# Steps at 16/32/64/128 rows with cuBLASLt's heuristic against wide tuning, alternating.
set -u
source build/setup_gpu.sh
for rep in 1 2; do
  for t in heuristic wide; do
    echo "# $t rep $rep" >> $OUT/steady.log
    timeout 100 build/l2kv bench --model synthetic:llama3-8b --mode steady --variants split --steady-batch 16 32 64 128 --steady-reps 30 --gemm-tuning $t 2>&1 | grep -E "^steady|loaded" >> $OUT/steady.log
  done
done
cat $OUT/steady.log
