#!/usr/bin/env bash
# MoE review fixes: the large-expert switch really applied (Mixtral: expert GEMV up to 2 slots per
# expert, cuBLASLt per expert above), the host path's sum added by the norm in fp32, a 32-expert
# test with multi-pass experts. Tests, then Mixtral against the build before (prev/: GEMV up to 8).
set -u
source build/setup_gpu.sh
cp build/run33.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 100 build/l2kv_tests --gtest_filter='CudaModel.*:*ModelOps*:Variants/CudaEngine.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|moe-tiny" $OUT/gpu_tests.log | head -20
for b in prev this; do
  bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
  echo "# $b" >> $OUT/steady.log
  timeout 60 $bin bench --model synthetic:mixtral-8x7b --mode steady --variants split --steady-batch 8 16 32 --steady-reps 10 2>&1 | grep -E "^steady" >> $OUT/steady.log
done
cat $OUT/steady.log
echo "all done at $SECONDS s"
