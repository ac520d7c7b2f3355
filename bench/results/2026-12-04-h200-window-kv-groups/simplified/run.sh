#!/usr/bin/env bash
# After the simplification pass: block reductions shared, fp8 kernels on the project's type
# helpers, step-state strides in one place.
set -u
source build/setup_gpu.sh
cp build/run56.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 400 build/l2kv_tests --gtest_filter='*ModelOps*:Fp8*:CudaModel.*:Fixtures/CudaModelFixture.*:CudaEngine*:Variants/CudaEngine.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|w8a8\] largest|windowed KV|Failure" $OUT/gpu_tests.log | head -20
