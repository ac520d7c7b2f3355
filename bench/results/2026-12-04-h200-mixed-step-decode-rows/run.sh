#!/usr/bin/env bash
# Issue 22's mixed-step target: decode rows beside a 2,048-token prompt chunk against a
# decode-only step, one step's kernels each (CUPTI).
set -u
source build/setup_gpu.sh
cp build/run55.sh $OUT/run.sh
timeout 300 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-batch 16 64 --steady-context 1024 --steady-chunk 0 2048 --profile --json $OUT/mixed.json > $OUT/mixed.log 2>&1; echo "rc=$?" >> $OUT/mixed.log
grep -vE "^\s*gap" $OUT/mixed.log | grep -E "steady|profile:|split_decode|prefill|attention|rc=" | head -40
