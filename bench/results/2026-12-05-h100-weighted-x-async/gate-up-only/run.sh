#!/usr/bin/env bash
# The fused layer's weighted x, third form (gate_up only; QKV keeps its norm prologue; as
# the norm prologue ran): the fused GEMV, model and engine GPU tests; steady base against it,
# alternated twice; a profile of each at batch 1.
set -u
source build/setup_gpu.sh
cp build/run89.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 150 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv.*:Dtypes/GemvDtype.*:Fixtures/CudaModelFixture.*:CudaEngine*:CudaModel.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
steady() {  # binary, log, model, batches...
  local bin=$1 log=$2 model=$3; shift 3
  echo "== $bin $model" >> $OUT/$log
  timeout 60 build/$bin bench --model synthetic:$model --mode steady --variants split --steady-batch "$@" --steady-reps 10 >> $OUT/$log 2>&1
  echo "$log $bin $model rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for b in base_l2kv l2kv; do steady $b steady.log llama3-8b 1 2 16; done; done
for b in base_l2kv l2kv; do steady $b steady.log qwen2.5-7b 1; steady $b steady.log llama2-7b 1; done
for b in base_l2kv l2kv; do steady $b profile.log llama3-8b 1 --profile; done
cat $OUT/summary.txt
grep -hE "^\[  FAILED|Failure" $OUT/tests.log | head -20
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-110
grep -E "==|    (qkv|gate_up|down|lm_head|o) |split_decode|gemv_kernel" $OUT/profile.log
