#!/usr/bin/env bash
# RoPE + paged-KV write in the QKV GEMV's epilogue: GPU tests, then steady steps against the
# build before (prev/), a profile, and the compiled-PyTorch peer at batch 1 and 16.
set -u
source build/setup_gpu.sh
cp build/run2.sh $OUT/run.sh
F='Dtypes/GemvDtype.*:Dtypes/FusedGemv.*:FusedGemvSupports.*:GemvFp8.*:Dtypes/ModelOps.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*:Variants/CudaPromptLogprobs.*:KvStorages/DecodeKernelsAgree.*:RopePairRows.*'
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
echo "tests done at $SECONDS s"
S="--mode steady --steady-context 1024 --variants split --steady-reps 30"
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b llama3-8b" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:llama3-8b $S --steady-batch 1 2 4 8 16 64 2>&1 | grep -E "^steady" >> $OUT/steady.log
    echo "# $b qwen2.5-7b" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:qwen2.5-7b $S --steady-batch 1 16 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
  echo "steady rep $rep done at $SECONDS s"
done
cat $OUT/steady.log
P="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 1 16 --profile"
timeout 60 build/l2kv bench $P > $OUT/profile.log 2>&1
grep -E "^steady|^    [a-z]" $OUT/profile.log | grep -v gap | head -40
echo "profile done at $SECONDS s"
C=$(grep -oE "ceiling [0-9]+ GB/s" $OUT/profile.log | head -1 | awk "{print \$2}")
left=$((580 - SECONDS))
if [ $left -gt 100 ]; then
  timeout $left python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 16 --context 1024 ${C:+--ceiling-gbps $C} --time-budget-s $((left - 10)) > $OUT/peer.log 2>&1
  grep -E "step|points" $OUT/peer.log
  timeout 40 build/l2kv bench --model synthetic:llama3-8b $S --steady-batch 1 16 2>&1 | grep -E "^steady" > $OUT/steady_after_peer.log
  cat $OUT/steady_after_peer.log
fi
echo "all done at $SECONDS s"
