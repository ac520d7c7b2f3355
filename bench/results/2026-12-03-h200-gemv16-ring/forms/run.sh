#!/usr/bin/env bash
# The GEMV at 9-16 rows: register form (L2KV_GEMV16=0, the default) against the shared-memory ring
# with 2 or 3 stages (=2, =3), for this run only: correctness of the ring forms at 9-16 rows,
# steady llama3-8b steps at 9, 12 and 16 rows alternated twice, profiles at 16 rows.
set -u
source build/setup_gpu.sh
cp build/run5.sh $OUT/run.sh
for form in 2 3; do
  L2KV_GEMV16=$form L2KV_REQUIRE_GPU=1 timeout 60 build/l2kv_tests --gtest_filter='Dtypes/GemvDtype.*:Dtypes/FusedGemv.RopeCache*:Dtypes/FusedGemv.ResidualEpilogue*' > $OUT/gpu_tests_form$form.log 2>&1; echo "rc=$?" >> $OUT/gpu_tests_form$form.log
  echo "form $form: $(grep -E "^\[  FAILED|PASSED|rc=" $OUT/gpu_tests_form$form.log | tr '\n' ' ')"
done
echo "tests done at $SECONDS s"
S="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 30 --steady-batch 9 12 16"
for rep in 1 2; do
  for form in 0 2 3; do
    echo "# L2KV_GEMV16=$form" >> $OUT/steady.log
    L2KV_GEMV16=$form timeout 60 build/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
done
cat $OUT/steady.log
for form in 0 2 3; do
  L2KV_GEMV16=$form timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 16 --profile > $OUT/profile_form$form.log 2>&1
  grep -E "^steady|^    (qkv|o |down|all)" $OUT/profile_form$form.log
done
echo "all done at $SECONDS s"
