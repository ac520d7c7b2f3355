#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='GpuSamplerGpuTest.*:Variants/CudaPromptLogprobs.*:CudaModel.HiddenRowLogits*:*Gemv*:*Fused*:Fixtures/CudaModelFixture.*:CudaEngineSingle.*:Variants/CudaEngine.*' > $OUT/gpu_tests.log 2>&1; echo "rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests ran" $OUT/gpu_tests.log | head -12
S="build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 50 --steady-batch 1"
for rep in 1 2; do
  echo "# five kernels at 1 row (default)" >> $OUT/steady.log
  timeout 40 $S 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
  echo "# nine kernels (--fused-layer-max-rows 0)" >> $OUT/steady.log
  timeout 40 $S --fused-layer-max-rows 0 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
done
timeout 40 $S --steady-reps 20 --profile > $OUT/profile.log 2>&1
cat $OUT/steady.log; grep -E "^    (qkv|o |gate_up|down|lm_head|all)" $OUT/profile.log
