#!/usr/bin/env bash
# Two tiles per warp at 9-16 rows only where 16-feature blocks need a second wave and 32-feature
# ones fit in one (QKV of Llama-3-8B, Qwen2.5-7B, Qwen3-8B), every epilogue including the q/k
# norm's: GEMV, fused GEMV, model fixture, engine and fused-layer tests; steady steps against the
# committed build (baseline/), alternated; a profile at 16 rows.
set -u
source build/setup_gpu.sh
cp build/run144.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 110 build/l2kv_tests --gtest_brief=1 --gtest_filter='*Gemv*:Fixtures/CudaModelFixture.*:Variants/CudaEngine*:*FusedLayer*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
steady() {  # binary, model, rows...
  local bin=$1 model=$2; shift 2
  echo "== $bin $model" >> $OUT/steady.log
  timeout 40 build/$bin bench --model synthetic:$model --variants split --mode steady --steady-reps 20 --steady-batch "$@" >> $OUT/steady.log 2>&1
  echo "steady $bin $model rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for round in 1 2; do
  for bin in baseline/l2kv l2kv; do
    steady $bin llama3-8b 1 9 12 16 64
    steady $bin qwen2.5-7b 9 12 16
    steady $bin qwen3-8b 9 12 16
  done
done
timeout 30 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 5 --steady-batch 16 --profile > $OUT/profile.log 2>&1
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head -20
grep -E "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-100
grep -E "qkv|^ +o |down|gate_up|profile:" $OUT/profile.log
gzip $OUT/tests.log
