#!/usr/bin/env bash
# The GEMV and Gemm routing tests and the model fixtures on this tree (the TMA/wgmma projection
# kernel removed), then l2kv_bench_gemv once.
set -u
source build/setup_gpu.sh
cp build/run151.sh $OUT/run.sh
export L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1
timeout 170 build/l2kv_tests --gtest_filter='*GemvDtype*:*GemvSupports*:*GemvTolerance*:Fixtures/CudaModelFixture.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
unset L2KV_REQUIRE_GPU L2KV_TEST_QUICK
timeout 40 build/l2kv_bench_gemv --models llama3-8b --rows 1 16 64 --reps 20 > $OUT/gemv.log 2>&1
echo "gemv rc=$? at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|FAILED)|tests ran|Failure" $OUT/tests.log | head -12
tail -8 $OUT/gemv.log | cut -c1-200
gzip -f $OUT/tests.log
