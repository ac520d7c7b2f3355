#!/usr/bin/env bash
# Fourth run (H200 wanted): batch 1 of 055b169 (baseline) against this build, alternated twice;
# e2e at concurrency 16 with the fused layer up to 16 rows against the default, alternated three
# times; steady 2-16 rows both ways once.
set -u
source build/setup_gpu.sh
cp build/run96.sh $OUT/run.sh
steady() {  # binary, log, model, args...
  local bin=$1 log=$2 model=$3; shift 3
  echo "== $bin $model $*" >> $OUT/$log
  timeout 90 build/$bin bench --model synthetic:$model --variants split --steady-reps 10 "$@" >> $OUT/$log 2>&1
  echo "$log $bin $model $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for b in baseline/l2kv l2kv; do steady $b b1.log llama3-8b --mode steady --steady-batch 1; done; done
for b in baseline/l2kv l2kv; do steady $b b1.log qwen2.5-7b --mode steady --steady-batch 1; steady $b b1.log llama2-7b --mode steady --steady-batch 1; done
for r in 1 2 3; do for f in 16 1; do steady l2kv e2e.log llama3-8b --mode e2e --concurrency 16 --input-len 512 --output-len 128 --fused-layer-max-rows $f; done; done
for f in 16 1; do steady l2kv rows.log llama3-8b --mode steady --steady-batch 2 4 8 12 16 --fused-layer-max-rows $f; done
L2KV_REQUIRE_GPU=1 timeout 60 build/l2kv_tests --gtest_filter='CudaEngineSingle.Async*:Fixtures/CudaModelFixture.FusedLayer*' > $OUT/tests.log 2>&1
echo "tests rc=$?" >> $OUT/summary.txt
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^==|^steady" $OUT/b1.log $OUT/rows.log | sed 's/  */ /g' | cut -c1-100
tr '\r' '\n' < $OUT/e2e.log | grep -E "^==|^e2e|per step" | sed 's/  */ /g' | cut -c1-170
grep -E "^\[  FAILED|^\[       OK|fused-layer\]" $OUT/tests.log
