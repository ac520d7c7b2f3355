#!/usr/bin/env bash
# Mixture-of-experts decode steps of up to 16 rows without the post-attention add_rmsnorm: O adds
# into the residual in its epilogue and writes the weighted x, the router (fp32 out) and the
# gate_up expert GEMV apply each row's 1 / rms. variant/ = 3c62ad2. Tests, then Qwen3-30B-A3B
# steady steps alternated twice, and a profile.
set -u
source build/setup_gpu.sh
cp build/run129.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 300 build/l2kv_tests --gtest_filter='MoeRouteGpu.*:*ExpertGemv*:CudaModel.*:Fixtures/CudaModelFixture.*:*FusedGemv*:*Gemv.*:CudaEngineSingle.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
steady() {  # binary model batches...
  local b=$1 m=$2; shift 2
  echo "== $b $m $*" >> $OUT/steady.log
  timeout 90 build/$b bench --model synthetic:$m --variants split --mode steady --steady-reps 20 --steady-batch "$@" >> $OUT/steady.log 2>&1
  echo "steady $b $m rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do steady variant/l2kv qwen3-30b-a3b 1 8 16 64; steady l2kv qwen3-30b-a3b 1 8 16 64; done
steady variant/l2kv llama3-8b 1 16; steady l2kv llama3-8b 1 16
echo "== profile" >> $OUT/profile.log
timeout 60 build/l2kv bench --model synthetic:qwen3-30b-a3b --variants split --mode steady --steady-reps 20 --steady-batch 1 --profile >> $OUT/profile.log 2>&1
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|moe-tiny" $OUT/tests.log | head -20; gzip $OUT/tests.log
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-100
grep -E "_kernel|profile:|nvjet" $OUT/profile.log | cut -c1-100
