#!/usr/bin/env bash
# Mixture of experts on the CUDA backend: its test against the CPU backend (both expert paths,
# graph replay), the fixture and engine tests; then synthetic Qwen3-30B-A3B and Mixtral-8x7B
# decode steps (per-slot expert GEMV in graphs up to 64 slots, grouped by expert above) and end
# to end.
set -u
source build/setup_gpu.sh
cp build/run26.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='CudaModel.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|moe-tiny" $OUT/gpu_tests.log | head -20
echo "tests done at $SECONDS s"
for m in qwen3-30b-a3b mixtral-8x7b; do
  timeout 120 build/l2kv bench --model synthetic:$m --mode steady --variants split --steady-batch 1 4 8 32 --steady-reps 10 > $OUT/steady_$m.log 2>&1; echo "rc=$?" >> $OUT/steady_$m.log
  grep -E "^steady|rc=|ceiling|rror" $OUT/steady_$m.log
  echo "$m steady done at $SECONDS s"
done
timeout 150 build/l2kv bench --model synthetic:qwen3-30b-a3b --mode e2e --variants split --input-len 512 --output-len 64 --concurrency 1 16 --num-prompts 16 > $OUT/e2e_qwen3moe.log 2>&1; echo "rc=$?" >> $OUT/e2e_qwen3moe.log
grep -E "^e2e|rc=|rror" $OUT/e2e_qwen3moe.log
echo "all done at $SECONDS s"
