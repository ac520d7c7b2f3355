#!/usr/bin/env bash
# MoE routing and grouping in one kernel (probabilities in registers): tests, then steady steps.
set -u
source build/setup_gpu.sh
cp build/run30.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='CudaModel.*:Variants/CudaEngine.*:CudaEngineSingle.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|moe-tiny" $OUT/gpu_tests.log | head -20
timeout 90 build/l2kv bench --model synthetic:qwen3-30b-a3b --mode steady --variants split --steady-batch 1 8 16 32 64 --steady-reps 10 > $OUT/steady_qwen3-30b-a3b.log 2>&1
timeout 90 build/l2kv bench --model synthetic:mixtral-8x7b --mode steady --variants split --steady-batch 1 8 --steady-reps 10 > $OUT/steady_mixtral-8x7b.log 2>&1
grep -hE "^steady" $OUT/steady_*.log
echo "all done at $SECONDS s"
