#!/usr/bin/env bash
# Where fp8 steps go: --profile at batch 1 and 64 (fp8 fused, bf16), and fp8 with wide GEMM tuning.
set -u
source build/setup_gpu.sh
cp build/run58.sh $OUT/run.sh
B=build/l2kv
for m in llama3-8b-fp8 llama3-8b; do
  timeout 120 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 1 64 --steady-context 1024 --profile > $OUT/profile-$m.log 2>&1; echo "$m rc=$?" >> $OUT/profile-$m.log
done
timeout 200 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 33 64 128 --steady-context 1024 --gemm-tuning wide > $OUT/wide.log 2>&1; echo "wide rc=$?" >> $OUT/wide.log
grep -aE "^steady|rc=" $OUT/*.log | sed 's/.*\r//'
