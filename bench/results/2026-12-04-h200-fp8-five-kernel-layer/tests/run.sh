#!/usr/bin/env bash
# The fused GEMV tests with fp8 weights (host references sped up) and the model fixtures.
set -u
source build/setup_gpu.sh
cp build/run63.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 280 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv.*:Fixtures/CudaModelFixture.*:CudaModel.Fp8*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|\[fp8|Failure|OK \] Dtypes/FusedGemv" $OUT/gpu_tests.log | head -40
