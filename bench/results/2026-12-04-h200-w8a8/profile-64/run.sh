#!/usr/bin/env bash
# Where a 64-row step of llama3-8b-fp8 goes (W8A8), beside bf16.
set -u
source build/setup_gpu.sh
cp build/run50.sh $OUT/run.sh
for m in llama3-8b llama3-8b-fp8; do
  timeout 120 build/l2kv bench --model synthetic:$m --variants split --mode steady --steady-batch 64 --steady-context 1024 --profile --json $OUT/$m.json > $OUT/$m.log 2>&1; echo "rc=$?" >> $OUT/$m.log
  grep -vE "^\s*gap" $OUT/$m.log | head -40
done
