#!/usr/bin/env bash
# The fp8 MoE test with its bound relative to the same model's 16-bit noise, and the other fp8
# model tests.
set -u
source build/setup_gpu.sh
cp build/run40.sh $OUT/run.sh
tar -xJf build/tok.tar.xz -C build
L2KV_REQUIRE_GPU=1 timeout 100 build/l2kv_tests --gtest_filter='CudaModel.Fp8*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|moe-tiny" $OUT/gpu_tests.log | head
echo "all done at $SECONDS s"
