#!/usr/bin/env bash
# GEMV forms at 1-8 rows, second round (L2KV_GEMV_FORM: 0 as is; 4 two-stage ring at three
# blocks per SM for the norm-prologue projections at one row; 5 the same for QKV only; 6 form 4
# plus 32-feature blocks for the register form's norm prologue at 2-8 rows).
set -u
source build/setup_gpu.sh
cp build/run8.sh $OUT/run.sh
G='Dtypes/FusedGemv.*:Dtypes/GemvDtype.*'
for form in 4 6; do
  L2KV_GEMV_FORM=$form L2KV_REQUIRE_GPU=1 timeout 100 build/l2kv_tests --gtest_filter="$G" > $OUT/gpu_tests_form$form.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests_form$form.log
  echo "form $form:"; grep -E "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests_form$form.log | head -10
done
echo "form tests done at $SECONDS s"
S="--mode steady --steady-context 1024 --variants split --steady-reps 30"
for rep in 1 2; do
  for form in 0 4 5 6; do
    echo "# form $form llama3-8b" >> $OUT/steady.log
    L2KV_GEMV_FORM=$form timeout 60 build/l2kv bench --model synthetic:llama3-8b $S --steady-batch 1 2 4 8 2>&1 | grep -E "^steady" >> $OUT/steady.log
    echo "# form $form qwen2.5-7b" >> $OUT/steady.log
    L2KV_GEMV_FORM=$form timeout 60 build/l2kv bench --model synthetic:qwen2.5-7b $S --steady-batch 1 4 2>&1 | grep -E "^steady" >> $OUT/steady.log
    echo "# form $form llama2-7b" >> $OUT/steady.log
    L2KV_GEMV_FORM=$form timeout 60 build/l2kv bench --model synthetic:llama2-7b $S --steady-batch 1 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
  echo "steady rep $rep done at $SECONDS s"
done
cat $OUT/steady.log
P="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 1 4 --profile"
for form in 0 4 6; do
  L2KV_GEMV_FORM=$form timeout 60 build/l2kv bench $P > $OUT/profile_form$form.log 2>&1
done
grep -E "^steady|^    [a-z]" $OUT/profile_form*.log | grep -v gap | grep -E "steady|qkv|   o |gate_up|down|all|split_decode"
echo "all done at $SECONDS s"
