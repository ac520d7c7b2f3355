#!/usr/bin/env bash
# Sixth run: a prompt-sized warm-up forward at engine start. Engine and model GPU tests; e2e
# first-token times of the build before (prev) and this one, alternated twice: one 2,048-token
# prompt, and 16 concurrent 512-token prompts with the default layer and with the fused layer up
# to 16 rows.
set -u
source build/setup_gpu.sh
cp build/run98.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='CudaEngine*:*CudaRunner*:Fixtures/CudaModelFixture.*:CudaModel.*:*PromptLogprobs*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
run() {  # binary, args...
  local bin=$1; shift
  echo "== $bin $*" >> $OUT/e2e.log
  timeout 90 build/$bin bench --model synthetic:llama3-8b --variants split --mode e2e "$@" >> $OUT/e2e.log 2>&1
  echo "$bin $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for b in prev/l2kv l2kv; do
  run $b --concurrency 1 --input-len 2048 --output-len 2
  run $b --concurrency 16 --input-len 512 --output-len 128
  run $b --concurrency 16 --input-len 512 --output-len 128 --fused-layer-max-rows 16
done; done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure" $OUT/tests.log | head -20
tr '\r' '\n' < $OUT/e2e.log | grep -E "^==|^e2e" | sed 's/  */ /g' | cut -c1-150
