#!/usr/bin/env bash
# Mixed steps: one-token rows through the split kernel (SplitDecode::plan_rows), chunks through
# the prefill kernel. GPU tests, then end to end against the build before (prev/) with 2K-token
# prompts at concurrency 16 (decode rows share steps with prompt chunks).
set -u
source build/setup_gpu.sh
cp build/run20.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 100 build/l2kv_tests --gtest_filter='SplitDecodeRows.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 70 build/l2kv_tests --gtest_filter='*Split*:*Prefill*:*Fp8*:*Pdl*:KvStorages/*' > $OUT/gpu_tests_quick.log 2>&1; echo "quick tests rc=$?" >> $OUT/gpu_tests_quick.log
grep -hE "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests.log $OUT/gpu_tests_quick.log | head -20
echo "tests done at $SECONDS s"
E="--model synthetic:llama3-8b --mode e2e --variants split --input-len 2048 --output-len 64 --concurrency 16 --num-prompts 32"
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b" >> $OUT/e2e.log
    timeout 25 $bin bench $E 2>&1 | tr '\r' '\n' | grep -E "^e2e" >> $OUT/e2e.log
  done
done
cat $OUT/e2e.log
echo "all done at $SECONDS s"
