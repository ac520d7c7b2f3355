#!/usr/bin/env bash
# The tree of 0dca6be on an H200: steady steps of llama3-8b, qwen2.5-7b (1-256 rows) and
# llama2-7b (1-64); the whole prefill of 8 x 512; the prefill attention sweep and the SDPA peers;
# the first token of 8K and 32K prompts (and a traced 32K point).
set -u
source build/setup_gpu.sh
cp build/run12.sh $OUT/run.sh
for m in llama3-8b:"1 16 64 128 256" qwen2.5-7b:"1 16 64 128 256" llama2-7b:"1 16 64"; do
  timeout 60 build/l2kv bench --model synthetic:${m%%:*} --variants split --mode steady --steady-reps 30 --steady-batch ${m##*:} 2>&1 | grep -E "steady|ceiling" >> $OUT/steady.log
  echo "steady ${m%%:*} rc=$? at $SECONDS s" >> $OUT/summary.txt
done
timeout 40 build/l2kv_bench_prefill --reps 5 --attention-lengths 512 --attention-prompts 1 > $OUT/prefill.log 2>&1
echo "whole prefill rc=$? at $SECONDS s" >> $OUT/summary.txt
timeout 60 build/l2kv_bench_prefill --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 > $OUT/sweep.log 2>&1
echo "sweep rc=$? at $SECONDS s" >> $OUT/summary.txt
timeout 70 python3 bench/model/sdpa_prefill_peers.py --lengths 1024 2048 8192 32768 --prompts 1 4 --json $OUT/sdpa.json > $OUT/peers.log 2>&1
echo "sdpa rc=$? at $SECONDS s" >> $OUT/summary.txt
for n in 8000 32000; do
  timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len $n --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 2>&1 | tr '\r' '\n' | grep -E "^e2e|per step" >> $OUT/ttft.log
done
timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 32000 --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 --profile 2>&1 | tr '\r' '\n' | grep -vE "^ *split:|^$|^l2kv" >> $OUT/ttft.log
echo "ttft rc=$? at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
cat $OUT/summary.txt
sed 's/  */ /g; s/ctx=1024 //' $OUT/steady.log | cut -c1-100
grep -E "^prefill|^time split|cuBLASLt bf16" $OUT/prefill.log
grep -E "wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*//' | cut -c1-100
tail -12 $OUT/peers.log | cut -c1-120
cut -c1-160 $OUT/ttft.log | head -24
