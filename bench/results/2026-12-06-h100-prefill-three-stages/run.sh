#!/usr/bin/env bash
# The wgmma prefill kernel with rings of three K/V tiles, copies issued two tiles ahead behind
# the MMAs and one block barrier a tile (it had two): prefill attention and model fixture tests;
# the kernel sweep against the committed kernel (baseline/), alternated twice.
set -u
source build/setup_gpu.sh
cp build/run152.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 100 build/l2kv_tests --gtest_brief=1 --gtest_filter='*PrefillAttention*:*PrefillWorkList*:Fixtures/CudaModelFixture.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
sweep() {  # binary
  echo "== $1" >> $OUT/sweep.log
  timeout 60 build/$1 --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 >> $OUT/sweep.log 2>&1
  echo "sweep $1 rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do
  sweep baseline/l2kv_bench_prefill
  sweep l2kv_bench_prefill
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head
grep -E "^==|wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/' | head -40
gzip $OUT/tests.log
