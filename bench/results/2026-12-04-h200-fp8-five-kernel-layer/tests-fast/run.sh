#!/usr/bin/env bash
# The fp8 fused GEMV tests with codes drawn eight per draw.
set -u
source build/setup_gpu.sh
cp build/run64.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 140 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv.Fp8*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|OK \]" $OUT/gpu_tests.log
