#!/usr/bin/env bash
# gate_up on the GEMV at 2-10 rows of the fused layer (the tree with
# bench/experiments/fused_gate_up_gemv_rows.patch applied; baseline/ = HEAD without it): the model
# and engine GPU tests, then steady steps at 1-16 rows, alternated twice.
set -u
source build/setup_gpu.sh
cp build/run114.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 240 build/l2kv_tests --gtest_filter='Fixtures/CudaModelFixture.*:Variants/CudaEngine*:*FusedGemv*:*CudaRunner*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
steady() {  # binary model
  echo "== $1 $2" >> $OUT/steady.log
  timeout 60 build/$1 bench --model synthetic:$2 --variants split --mode steady --steady-reps 20 --steady-batch 1 2 4 8 10 12 16 >> $OUT/steady.log 2>&1
  echo "steady $1 $2 rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do steady baseline/l2kv llama3-8b; steady l2kv llama3-8b; done
steady baseline/l2kv qwen2.5-7b; steady l2kv qwen2.5-7b
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|fused-layer" $OUT/tests.log | head -20
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-100
