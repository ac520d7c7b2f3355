#!/usr/bin/env bash
# Seventh run: the fused layer's sums of squares in fixed point (the same bits in any order of
# the blocks' atomic additions) and the fused layer by default up to 16 rows for bf16 models.
# GPU tests of the changed kernels, model and engine (the asynchronous-scheduling test compares
# logprobs bit for bit); steady 1 / 8 / 16 rows and e2e at 16 of the build before (prev) and
# this one, alternated twice.
set -u
source build/setup_gpu.sh
cp build/run99.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 150 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv*:FusedGemv*:Dtypes/ModelOps.*:Fixtures/CudaModelFixture.*:CudaModel.*:CudaEngine*:*CudaRunner*:*PromptLogprobs*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
run() {  # binary, log, args...
  local bin=$1 log=$2; shift 2
  echo "== $bin $*" >> $OUT/$log
  timeout 90 build/$bin bench --model synthetic:llama3-8b --variants split "$@" >> $OUT/$log 2>&1
  echo "$bin $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do
  run prev/l2kv steady.log --mode steady --steady-batch 1 8 16 --steady-reps 10 --fused-layer-max-rows 16
  run l2kv steady.log --mode steady --steady-batch 1 8 16 --steady-reps 10
  run prev/l2kv e2e.log --mode e2e --concurrency 16 --input-len 512 --output-len 128
  run l2kv e2e.log --mode e2e --concurrency 16 --input-len 512 --output-len 128
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|fused-layer\]" $OUT/tests.log | head -20
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-110
tr '\r' '\n' < $OUT/e2e.log | grep -E "^==|^e2e" | sed 's/  */ /g' | cut -c1-150
