#!/usr/bin/env bash
# GPU tests of the reviewed weighted-x commits and of the fused layer at 2-16 rows (gate_up on
# cuBLASLt over the weighted x, weighted_silu_mul, QKV on weighted x); batch 1 against the tree
# before the weighted x (055b169), alternated twice; the fused layer at 2-16 rows against nine
# kernels, alternated twice; profiles at 16 rows.
set -u
source build/setup_gpu.sh
cp build/run93.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 200 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv.*:Dtypes/GemvDtype.*:Dtypes/ModelOps.*:Fixtures/CudaModelFixture.*:CudaEngine*:CudaModel.*:*Split*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
steady() {  # binary, log, model, args...
  local bin=$1 log=$2 model=$3; shift 3
  echo "== $bin $model $*" >> $OUT/$log
  timeout 90 build/$bin bench --model synthetic:$model --mode steady --variants split --steady-reps 10 "$@" >> $OUT/$log 2>&1
  echo "$log $bin $model $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for b in baseline/l2kv l2kv; do steady $b b1.log llama3-8b --steady-batch 1; done; done
for b in baseline/l2kv l2kv; do steady $b b1.log qwen2.5-7b --steady-batch 1; steady $b b1.log llama2-7b --steady-batch 1; done
for r in 1 2; do for f in 1 16; do steady l2kv rows.log llama3-8b --steady-batch 2 4 8 12 16 --fused-layer-max-rows $f; done; done
for f in 1 16; do steady l2kv rows.log qwen2.5-7b --steady-batch 4 16 --fused-layer-max-rows $f; steady l2kv rows.log llama2-7b --steady-batch 4 16 --fused-layer-max-rows $f; done
for f in 1 16; do steady l2kv profile.log llama3-8b --steady-batch 16 --fused-layer-max-rows $f --profile; done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|fused-layer\]" $OUT/tests.log | head -20
grep -hE "^==|^steady" $OUT/b1.log $OUT/rows.log | sed 's/  */ /g' | cut -c1-110
grep -E "==|    (qkv|gate_up|down|lm_head|o) |split_decode|gemv_kernel|silu|rmsnorm" $OUT/profile.log | head -60
