#!/usr/bin/env bash
# MoE: the slots' weighted sum folded into the next RMSNorm (no combine kernel in decode steps)
# and the expert GEMV's loop unrolled by two, against the build before (prev/).
set -u
source build/setup_gpu.sh
cp build/run31.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='CudaModel.*:*ModelOps*:Variants/CudaEngine.*:CudaEngineSingle.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|moe-tiny" $OUT/gpu_tests.log | head -20
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b rep $rep" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:qwen3-30b-a3b --mode steady --variants split --steady-batch 1 8 64 --steady-reps 10 2>&1 | grep -E "^steady" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:mixtral-8x7b --mode steady --variants split --steady-batch 1 8 --steady-reps 10 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
done
cat $OUT/steady.log
echo "all done at $SECONDS s"
