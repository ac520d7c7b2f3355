#!/usr/bin/env bash
# Gemma's output norms folded into the next add_rmsnorm (no kernel of their own): the op tests,
# the Gemma model tests, and gemma3-12b / 27b steady steps at batch 1 and 16.
set -u
source build/setup_gpu.sh
cp build/run42.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='*ModelOps*:CudaModel.Gemma3*:Fixtures/CudaModelFixture.MatchesTransformers*:CudaModel.*Mixture*:Variants/CudaEngine.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|gemma3 |gemma3-sliding kv auto prompt of 150: logits" $OUT/gpu_tests.log | head -20
for m in gemma3-12b gemma3-27b; do
  timeout 60 build/l2kv bench --model synthetic:$m --mode steady --variants split --steady-batch 1 16 --steady-reps 20 2>&1 | grep -E "^steady|rror" | sed "s/^/$m /" | tee -a $OUT/steady.log
done
echo "all done at $SECONDS s"
