#!/usr/bin/env bash
# silu_mul renamed gated_mul with a GateActivation: the op tests and the model fixtures.
set -u
source build/setup_gpu.sh
cp build/run43.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='*ModelOps*:CudaModel.Gemma3*:Fixtures/CudaModelFixture.MatchesTransformers*:CudaModel.MixtureOfExperts*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests.log | head
