#!/usr/bin/env bash
# bb7e467 on the GPU, then GEMV forms at 1-8 rows (L2KV_GEMV_FORM: 0 as is, 1 two-stage ring
# at three blocks per SM, 2 QKV in 32-feature blocks, 3 QKV norm inline).
set -u
source build/setup_gpu.sh
cp build/run7.sh $OUT/run.sh
F='Dtypes/FusedGemv.*:FusedGemvSupports.*:GemvFp8.*:Dtypes/GemvDtype.*:Dtypes/ModelOps.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*:Variants/CudaPromptLogprobs.*:KvStorages/DecodeKernelsAgree.*:PairedRows.*'
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
echo "tests done at $SECONDS s"
G='Dtypes/FusedGemv.*:Dtypes/GemvDtype.*:Fixtures/CudaModelFixture.*'
for form in 1 2 3; do
  L2KV_GEMV_FORM=$form L2KV_REQUIRE_GPU=1 timeout 100 build/l2kv_tests --gtest_filter="$G" > $OUT/gpu_tests_form$form.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests_form$form.log
  echo "form $form:"; grep -E "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests_form$form.log | head -10
done
echo "form tests done at $SECONDS s"
S="--mode steady --steady-context 1024 --variants split --steady-reps 30"
for rep in 1 2; do
  for form in 0 1 2 3; do
    echo "# form $form llama3-8b" >> $OUT/steady.log
    L2KV_GEMV_FORM=$form timeout 60 build/l2kv bench --model synthetic:llama3-8b $S --steady-batch 1 2 4 8 2>&1 | grep -E "^steady" >> $OUT/steady.log
    echo "# form $form qwen2.5-7b" >> $OUT/steady.log
    L2KV_GEMV_FORM=$form timeout 60 build/l2kv bench --model synthetic:qwen2.5-7b $S --steady-batch 1 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
  echo "steady rep $rep done at $SECONDS s"
done
cat $OUT/steady.log
P="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 1 4 --profile"
for form in 0 1 2; do
  L2KV_GEMV_FORM=$form timeout 60 build/l2kv bench $P > $OUT/profile_form$form.log 2>&1
done
grep -E "^steady|^    [a-z]" $OUT/profile_form*.log | grep -v gap | grep -E "steady|qkv|   o |gate_up|down|all|split_decode" 
echo "all done at $SECONDS s"
