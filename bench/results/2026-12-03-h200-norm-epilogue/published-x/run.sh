#!/usr/bin/env bash
# Published x for late gate_up / QKV blocks: tests, batch-1 steps against the build before (prev/).
set -u
source build/setup_gpu.sh
log() { echo "$(date +%T) $*" >> $OUT/timeline.txt; }
F='Dtypes/FusedGemv.*:FusedGemvSupports.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*:Variants/CudaPromptLogprobs.*'
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
log tests
grep -E "^\[  FAILED|rc=|PASSED|fused-layer|tests from .* ran" $OUT/gpu_tests.log | head -20
S="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 50 --steady-batch 1 2 16"
for rep in 1 2; do
  echo "# prev build (f7c95ec), default" >> $OUT/steady.log
  timeout 50 build/prev/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  echo "# this build, default" >> $OUT/steady.log
  timeout 50 build/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
done
echo "# this build, --fused-layer-max-rows 0" >> $OUT/steady.log
timeout 50 build/l2kv bench $S --fused-layer-max-rows 0 2>&1 | grep -E "^steady" >> $OUT/steady.log
log steady
cat $OUT/steady.log
timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 1 --profile > $OUT/profile.log 2>&1
grep -E "^steady|^    [a-z]" $OUT/profile.log | grep -v gap | head -14
log profile
timeout 100 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 512 --output-len 128 --concurrency 1 16 64 2>&1 | tr "\r" "\n" | grep -E "^e2e|TTFT|ttft" > $OUT/e2e.log
log e2e
cat $OUT/e2e.log $OUT/timeline.txt
