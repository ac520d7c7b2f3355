#!/usr/bin/env bash
# Experiment: the fp8 product without cuBLASLt's outer-vector scaling (scalar mode, float32 out,
# scales applied by a kernel after), against the outer-vector one, llama3-8b-fp8 steady.
set -u
source build/setup_gpu.sh
cp build/run52.sh $OUT/run.sh
for mode in outer unscaled; do
  if [ $mode = unscaled ]; then export L2KV_FP8_UNSCALED=1; fi
  timeout 150 build/l2kv bench --model synthetic:llama3-8b-fp8 --variants split --mode both --steady-batch 33 64 128 --steady-context 1024 --input-len 512 --output-len 256 --concurrency 64 --json $OUT/fp8_$mode.json > $OUT/fp8_$mode.log 2>&1; echo "rc=$?" >> $OUT/fp8_$mode.log
  grep -aE "^steady|e2e  |rc=" $OUT/fp8_$mode.log | sed 's/.*\r//'
done
timeout 100 build/l2kv bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 64 --steady-context 1024 --profile > $OUT/fp8_unscaled_profile.log 2>&1
grep -vE "^\s*gap" $OUT/fp8_unscaled_profile.log | head -30
