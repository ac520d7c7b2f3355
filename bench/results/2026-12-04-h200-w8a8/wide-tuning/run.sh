#!/usr/bin/env bash
# llama3-8b-fp8 W8A8 steps with cuBLASLt's heuristic against the wide search (fp8 plans too).
set -u
source build/setup_gpu.sh
cp build/run51.sh $OUT/run.sh
for t in heuristic wide; do
  timeout 200 build/l2kv bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 33 64 128 --steady-context 1024 --gemm-tuning $t --json $OUT/fp8_$t.json > $OUT/fp8_$t.log 2>&1; echo "rc=$?" >> $OUT/fp8_$t.log
  grep -E "^steady|rc=" $OUT/fp8_$t.log
done
timeout 100 build/l2kv bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 64 --steady-context 1024 --gemm-tuning wide --profile > $OUT/fp8_wide_profile.log 2>&1
grep -vE "^\s*gap" $OUT/fp8_wide_profile.log | head -30
