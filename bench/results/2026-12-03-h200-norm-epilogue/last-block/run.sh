#!/usr/bin/env bash
# The residual epilogue's norm: tests, then steady steps against the build before (prev/).
set -u
source build/setup_gpu.sh
F='Dtypes/FusedGemv.*:FusedGemvSupports.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*:Dtypes/ModelOps.*:Variants/CudaPromptLogprobs.*:KvStorages/DecodeKernelsAgree.*'
L2KV_REQUIRE_GPU=1 timeout 230 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|fused-layer|tests from .* ran" $OUT/gpu_tests.log | head -30
S="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 30 --steady-batch 1 2 4 8 16"
for rep in 1 2; do
  echo "# prev build (f7c95ec), default" >> $OUT/steady.log
  timeout 60 build/prev/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  echo "# this build, default (fused layer at 1 row)" >> $OUT/steady.log
  timeout 60 build/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  echo "# this build, --fused-layer-max-rows 16" >> $OUT/steady.log
  timeout 60 build/l2kv bench $S --fused-layer-max-rows 16 2>&1 | grep -E "^steady" >> $OUT/steady.log
  echo "# this build, --fused-layer-max-rows 0" >> $OUT/steady.log
  timeout 60 build/l2kv bench $S --fused-layer-max-rows 0 2>&1 | grep -E "^steady" >> $OUT/steady.log
done
cat $OUT/steady.log
timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 1 16 --fused-layer-max-rows 16 --profile > $OUT/profile.log 2>&1
grep -E "^steady|^    [a-z]" $OUT/profile.log | grep -v "gap" | head -40
