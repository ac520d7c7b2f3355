#!/usr/bin/env bash
# Review fixes: the split merge with chunks of slices all hidden by a window (forced one-tile
# slices at 4-8K tokens), Gemma's embedding scale in the model's dtype, a mixed decode + prompt
# step with windows against the CPU backend, graph replay at 5e-3.
set -u
source build/setup_gpu.sh
cp build/run41.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='DecodeAttention.SplitSliding*:CudaModel.Gemma3*:Fixtures/CudaModelFixture.MatchesTransformers*:PrefillAttention.SlidingWindow*:CudaModel.Fp8*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|gemma3|one-tile" $OUT/gpu_tests.log | head -40
echo "all done at $SECONDS s"
