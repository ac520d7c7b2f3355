#!/usr/bin/env bash
# After the review fixes: model, engine and fp8 GPU tests.
set -u
source build/setup_gpu.sh
cp build/run54.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 400 build/l2kv_tests --gtest_filter='CudaModel.*:Fixtures/CudaModelFixture.*:*CudaEngine*:*CudaRunner*:Fp8*:GemvFp8*:*ModelOps*:*Gemv*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|w8a8\] largest|fp8-tiny|windowed KV|Failure|Expected|actual" $OUT/gpu_tests.log | head -30
