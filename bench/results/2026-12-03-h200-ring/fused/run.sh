#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
log() { echo "$(date +%T) $*" >> $OUT/timeline.txt; }
log start
L2KV_REQUIRE_GPU=1 timeout 330 build/l2kv_tests > $OUT/gpu_tests.log 2>&1; echo "rc=$?" >> $OUT/gpu_tests.log
log tests
grep -E "^\[  FAILED|rc=|PASSED|tests ran" $OUT/gpu_tests.log | head -20
B="build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 50"
for rep in 1 2; do
  for cfg in nine fused; do
    F=""; [[ $cfg == fused ]] && F="--fused-layer"
    echo "# $cfg" >> $OUT/steady.log
    timeout 100 $B --steady-batch 1 2 4 8 $F 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
    log "steady $cfg $rep"
  done
done
echo "# nine, larger batches" >> $OUT/steady.log
timeout 100 $B --steady-batch 16 64 128 256 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
log big
echo "# fp8 KV, nine and fused" >> $OUT/steady.log
timeout 60 $B --steady-batch 1 64 --kv-cache-dtype fp8 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
timeout 60 $B --steady-batch 1 --kv-cache-dtype fp8 --fused-layer 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
log fp8
timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 --steady-context 1024 --variants split --steady-reps 20 --profile --fused-layer > $OUT/profile_fused.log 2>&1
log profile
cat $OUT/steady.log
grep -v "^    gap" $OUT/profile_fused.log | tail -16
