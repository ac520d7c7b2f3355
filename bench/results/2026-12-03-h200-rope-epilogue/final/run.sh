#!/usr/bin/env bash
# RoPE epilogue with explicit roundings: GPU tests, compute-sanitizer on the new epilogue and
# the pair-row RoPE kernels, steady steps against the build before (prev/).
set -u
source build/setup_gpu.sh
cp build/run4.sh $OUT/run.sh
F='Dtypes/FusedGemv.*:FusedGemvSupports.*:GemvFp8.*:Dtypes/ModelOps.*:Dtypes/GemvDtype.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*:Variants/CudaPromptLogprobs.*:KvStorages/DecodeKernelsAgree.*:RopePairRows.*'
L2KV_REQUIRE_GPU=1 timeout 170 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
echo "tests done at $SECONDS s"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
R='Dtypes/FusedGemv.RopeCache*:Dtypes/ModelOps.Rope*'
for tool in memcheck synccheck racecheck; do
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 60 $CS --tool $tool build/l2kv_tests --gtest_filter="$R" > $OUT/sanitizer_$tool.log 2>&1; echo "rc=$?" >> $OUT/sanitizer_$tool.log
  echo "$tool: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|rc=" $OUT/sanitizer_$tool.log | tr '\n' ' ')"
done
echo "sanitizers done at $SECONDS s"
S="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 30 --steady-batch 1 2 4 8 16 64 128"
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b llama3-8b" >> $OUT/steady.log
    timeout 60 $bin bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
done
cat $OUT/steady.log
echo "all done at $SECONDS s"
