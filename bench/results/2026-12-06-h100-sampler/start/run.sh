#!/usr/bin/env bash
# Session start: the q/k-norm test shapes no GPU has run, the weight-streaming PDL test three
# times; the block tables' pitched upload (l2kv) against the whole-stride upload (baseline/l2kv,
# same tree otherwise) at --max-model-len 32768; profiles with gaps per transition; what
# penalties and sampling cost end to end.
set -u
source build/setup_gpu.sh
cp build/run131.sh $OUT/run.sh
export L2KV_REQUIRE_GPU=1
L2KV_TEST_QUICK=1 timeout 240 build/l2kv_tests --gtest_brief=1 --gtest_filter='*QkNorm*:*FusedGemv*:*StepProfile*:Fixtures/CudaModelFixture.*:Variants/CudaEngine*:*CudaRunner*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
for i in 1 2 3; do
  timeout 60 build/l2kv_tests --gtest_brief=1 --gtest_filter='*WeightStreamDtype.ProgrammaticLaunch*' >> $OUT/pdl.log 2>&1
  echo "pdl test $i rc=$? at $SECONDS s" >> $OUT/summary.txt
done
unset L2KV_REQUIRE_GPU
steady() {  # binary, label, args...
  local bin=$1 label=$2; shift 2
  echo "== $label $*" >> $OUT/steady.log
  timeout 120 $bin bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 20 "$@" 2>&1 | grep -E "^steady|profile|gap|  [a-z_]+ +[0-9]" >> $OUT/steady.log
}
for round in 1 2; do
  steady build/baseline/l2kv base --steady-batch 16 64 256 --max-model-len 32768
  steady build/l2kv new --steady-batch 16 64 256 --max-model-len 32768
done
echo "steady done at $SECONDS s" >> $OUT/summary.txt
steady build/l2kv new-profile --steady-batch 16 64 --profile
echo "profile done at $SECONDS s" >> $OUT/summary.txt
e2e() {  # binary, label, args...
  local bin=$1 label=$2; shift 2
  echo "== $label $*" >> $OUT/e2e.log
  timeout 120 $bin bench --model synthetic:llama3-8b --variants split --mode e2e --input-len 512 --output-len 128 --concurrency 64 "$@" 2>&1 | grep -E "^e2e|per step" >> $OUT/e2e.log
}
e2e build/l2kv greedy
e2e build/l2kv rep1.05 --repetition-penalty 1.05
e2e build/l2kv qwen-defaults --temperature 0.7 --top-p 0.8 --top-k 20 --repetition-penalty 1.05
e2e build/l2kv freq --temperature 0.7 --frequency-penalty 0.5 --presence-penalty 0.5
e2e build/baseline/l2kv base-mml32768 --max-model-len 32768
e2e build/l2kv new-mml32768 --max-model-len 32768
echo "e2e done at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|tests from|Failure" $OUT/tests.log | head -20
grep -E "PASSED|FAILED" $OUT/pdl.log
cat $OUT/steady.log | grep -v "^    " ; grep "gaps " $OUT/steady.log
cat $OUT/e2e.log
gzip $OUT/tests.log $OUT/pdl.log
