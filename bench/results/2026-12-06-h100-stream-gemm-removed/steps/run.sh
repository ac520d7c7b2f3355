#!/usr/bin/env bash
# Issue 17's ratio on one card in one run: the Gemv/Gemm and model fixture GPU tests on this tree
# (the TMA/wgmma projection kernel removed); l2kv steady steps of synthetic llama3-8b at 1-256
# rows, the compiled-PyTorch peer at 1/16/64/128/256, l2kv again; qwen2.5-7b and llama2-7b MBU.
set -u
source build/setup_gpu.sh
cp build/run150.sh $OUT/run.sh
export L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1
timeout 110 build/l2kv_tests --gtest_brief=1 --gtest_filter='*Gemv*:*Gemm*:Fixtures/CudaModelFixture.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
unset L2KV_REQUIRE_GPU L2KV_TEST_QUICK
steady() {  # model, rows...
  local model=$1; shift
  timeout 60 build/l2kv bench --model synthetic:$model --variants split --mode steady --steady-reps 20 --steady-batch "$@" >> $OUT/steady.log 2>&1
  echo "steady $model $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
steady llama3-8b 1 16 64 128 256
C=$(grep -oE "ceiling [0-9]+" $OUT/steady.log | head -1 | grep -oE "[0-9]+")
left=$((470 - SECONDS))
timeout $left python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 16 64 128 256 --context 1024 ${C:+--ceiling-gbps $C} --time-budget-s $((left - 40)) --json $OUT/peer.json > $OUT/peer.log 2>&1
echo "peer rc=$? at $SECONDS s" >> $OUT/summary.txt
steady llama3-8b 1 16 64 128 256
steady qwen2.5-7b 1 16 64 128 256
steady llama2-7b 1 16 64
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|FAILED)|Failure" $OUT/tests.log | head -12
grep -E "^steady|ceiling" $OUT/steady.log | sed 's/  */ /g' | cut -c1-160
grep -E "step|points" $OUT/peer.log | tail -7 | cut -c1-200
gzip -f $OUT/tests.log
