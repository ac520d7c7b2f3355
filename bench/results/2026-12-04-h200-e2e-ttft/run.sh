#!/usr/bin/env bash
# This build at large batches (steady), end to end at concurrency 1/16/64, and time to first
# token of one 1K / 8K / 32K-token prompt.
set -u
source build/setup_gpu.sh
cp build/run13.sh $OUT/run.sh
timeout 50 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 64 128 256 > $OUT/steady.log 2>&1
grep -E "^steady|ceiling" $OUT/steady.log
echo "steady done at $SECONDS s"
timeout 70 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 512 --output-len 128 --concurrency 1 16 64 --json $OUT/e2e.json > $OUT/e2e.log 2>&1
echo "e2e rc=$? at $SECONDS s"; grep -vE "^l2kv: load" $OUT/e2e.log | tail -8
for len in 1024 8192 32000; do
  timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len $len --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 >> $OUT/ttft.log 2>&1
  echo "ttft $len rc=$? at $SECONDS s"
done
grep -iE "ttft|e2e " $OUT/ttft.log | tail -6
echo "all done at $SECONDS s"
