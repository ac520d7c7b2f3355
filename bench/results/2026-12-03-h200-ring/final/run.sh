#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
log() { echo "$(date +%T) $*" >> $OUT/timeline.txt; }
log start
L2KV_REQUIRE_GPU=1 timeout 260 build/l2kv_tests --gtest_filter='*Gemv*:*Fused*:CudaModel*:Fixtures/*:Variants/*:CudaEngine*:KvStorages/*:*CudaRunner*:*Preempt*' > $OUT/gpu_tests.log 2>&1; echo "rc=$?" >> $OUT/gpu_tests.log
log tests
grep -E "^\[  FAILED|rc=|PASSED|tests ran|parts at" $OUT/gpu_tests.log | head -30
S="build/l2kv bench --mode steady --steady-context 1024 --variants split --steady-reps 50"
timeout 100 $S --model synthetic:llama3-8b --steady-batch 1 2 4 8 16 64 128 256 2>&1 | grep -E "^steady|ceiling" > $OUT/steady_llama3.log
log llama3
timeout 100 $S --model synthetic:llama3-8b --steady-batch 1 --fused-layer-max-rows 0 2>&1 | grep -E "^steady|ceiling" > $OUT/steady_llama3_nine.log
timeout 100 $S --model synthetic:qwen2.5-7b --steady-batch 1 16 64 128 256 2>&1 | grep -E "^steady|ceiling" > $OUT/steady_qwen.log
log qwen
timeout 100 $S --model synthetic:llama2-7b --steady-batch 1 16 64 128 2>&1 | grep -E "^steady|ceiling" > $OUT/steady_llama2.log
log llama2
timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 --steady-context 1024 --variants split --steady-reps 20 --profile > $OUT/profile.log 2>&1
log profile
cat $OUT/steady_*.log
