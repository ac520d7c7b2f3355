#!/usr/bin/env bash
# Gemma's output norms folded into the next add_rmsnorm (no kernel of their own): a
# third round: GeGLU as g / (1 + exp(-2y)); op and Gemma tests, gemma3 steady steps.
set -u
source build/setup_gpu.sh
cp build/run42.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='*ModelOps*:CudaModel.Gemma3*:Fixtures/CudaModelFixture.MatchesTransformers*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|gemma3 |gemma3-sliding kv auto prompt of 150: logits" $OUT/gpu_tests.log | head -20
for m in gemma3-12b gemma3-27b; do
  timeout 60 build/l2kv bench --model synthetic:$m --mode steady --variants split --steady-batch 1 16 --steady-reps 20 2>&1 | grep -E "^steady|rror" | sed "s/^/$m /" | tee -a $OUT/steady.log
done
echo "all done at $SECONDS s"
