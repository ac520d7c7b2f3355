#!/usr/bin/env bash
# Third run: the fused layer by default up to 16 rows for bf16 models. Every GPU test; batch 1
# of 055b169 (baseline) against this build, alternated twice; steady 1-64 rows with the default
# against --fused-layer-max-rows 1, alternated twice; e2e at concurrency 16 both ways.
set -u
source build/setup_gpu.sh
cp build/run95.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 330 build/l2kv_tests --gtest_filter='-*Tokenizer*:*ChatTemplate*:OpenAiProtocol.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
steady() {  # binary, log, model, args...
  local bin=$1 log=$2 model=$3; shift 3
  echo "== $bin $model $*" >> $OUT/$log
  timeout 90 build/$bin bench --model synthetic:$model --variants split --steady-reps 10 "$@" >> $OUT/$log 2>&1
  echo "$log $bin $model $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for b in baseline/l2kv l2kv; do steady $b b1.log llama3-8b --mode steady --steady-batch 1; done; done
for b in baseline/l2kv l2kv; do steady $b b1.log qwen2.5-7b --mode steady --steady-batch 1; steady $b b1.log llama2-7b --mode steady --steady-batch 1; done
for r in 1 2; do for f in 16 1; do steady l2kv rows.log llama3-8b --mode steady --steady-batch 2 4 8 12 16 64 --fused-layer-max-rows $f; done; done
for f in 16 1; do steady l2kv e2e.log llama3-8b --mode e2e --concurrency 16 --input-len 512 --output-len 128 --fused-layer-max-rows $f; done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|fused-layer\]" $OUT/tests.log | head -20
grep -hE "^==|^steady" $OUT/b1.log $OUT/rows.log | sed 's/  */ /g' | cut -c1-100
tr '\r' '\n' < $OUT/e2e.log | grep -E "^==|^e2e" | sed 's/  */ /g' | cut -c1-160
