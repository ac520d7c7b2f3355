#!/usr/bin/env bash
# Profiles: qwen3-30b-a3b and mixtral decode at batch 1 (where MoE time goes); gemma3-27b steady
# with KV cache groups on/off again (MBU fixed, e540435); fp8 llama3-8b against bf16.
set -u
source build/setup_gpu.sh
cp build/run45.sh $OUT/run.sh
B=build/l2kv
timeout 150 $B bench --model synthetic:qwen3-30b-a3b --variants split --mode steady --steady-batch 1 8 --steady-context 1024 --profile --json $OUT/moe_profile.json > $OUT/moe_profile.log 2>&1; echo "moe rc=$?" >> $OUT/moe_profile.log
for hybrid in on off; do
  flag=""; [ $hybrid = off ] && flag="--disable-hybrid-kv-cache-manager"
  timeout 100 $B bench --model synthetic:gemma3-27b --variants split --mode steady --steady-batch 1 16 64 --steady-context 4096 $flag --json $OUT/steady_27b_$hybrid.json >> $OUT/bench.log 2>&1; echo "steady $hybrid rc=$?" >> $OUT/bench.log
done
for m in llama3-8b llama3-8b-fp8; do
  timeout 120 $B bench --model synthetic:$m --variants split --mode both --steady-batch 1 16 64 --steady-context 1024 --input-len 512 --output-len 256 --concurrency 64 --json $OUT/fp8_$m.json >> $OUT/bench.log 2>&1; echo "$m rc=$?" >> $OUT/bench.log
done
grep -E "^steady|^e2e|rc=" $OUT/bench.log
grep -E "^steady|rc=" $OUT/moe_profile.log
