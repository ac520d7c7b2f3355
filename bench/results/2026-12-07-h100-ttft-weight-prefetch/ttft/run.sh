#!/usr/bin/env bash
# Where the first token of a 32K prompt goes: l2kv bench e2e (one request at a time, three
# prompts) with its per-step line, then the same with --profile (every kernel of the point,
# busy time and the gaps between kernels).
set -u
source build/setup_gpu.sh
cp build/run09.sh $OUT/run.sh
for n in 8000 32000; do
  echo "== ttft $n" >> $OUT/ttft.log
  timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len $n --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 2>&1 | tr '\r' '\n' | grep -vE "^ *split:|^$" >> $OUT/ttft.log
  echo "ttft $n rc=$? at $SECONDS s" >> $OUT/summary.txt
done
echo "== ttft 32000 --profile" >> $OUT/ttft.log
timeout 90 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 32000 --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 --profile 2>&1 | tr '\r' '\n' | grep -vE "^ *split:|^$" >> $OUT/ttft.log
echo "ttft profile rc=$? at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
cat $OUT/summary.txt
cut -c1-200 $OUT/ttft.log
