#!/usr/bin/env bash
# The 9-16-row GEMV with two 16-feature tiles per warp (one x load for both tiles' weights), an
# experiment build: L2KV_EXP_GEMV_WARP_TILES=0 the register form as before, 1 two tiles a warp at
# two blocks per SM (2 weight vectors per row in flight), 2 at one block per SM (4 vectors);
# L2KV_EXP_GATE_UP_GEMV_ROWS moves gate_up's GEMV threshold (10). GPU tests of the GEMV in all
# three forms, the model/engine tests in form 1; l2kv_bench_gemv and steady steps; the sampler
# of 965d349 (tests and bench); the compiled-PyTorch peer at 1 and 16 rows.
set -u
source build/setup_gpu.sh
cp build/run142.sh $OUT/run.sh
export L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1
for form in 1 2; do
  L2KV_EXP_GEMV_WARP_TILES=$form timeout 80 build/l2kv_tests --gtest_brief=1 --gtest_filter='*Gemv*:-*Fp8*' > $OUT/t.log 2>&1
  echo "gemv tests form $form rc=$? at $SECONDS s" >> $OUT/summary.txt
  grep -E "^\[  (PASSED|FAILED)|Failure" $OUT/t.log | head -8 >> $OUT/tests.log
done
timeout 120 build/l2kv_tests --gtest_brief=1 --gtest_filter='Fixtures/CudaModelFixture.*:Variants/CudaEngine*:*CudaRunner*:*GpuSampler*' > $OUT/t.log 2>&1
echo "model/engine/sampler tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|FAILED)|Failure" $OUT/t.log | head -20 >> $OUT/tests.log
unset L2KV_REQUIRE_GPU L2KV_TEST_QUICK
timeout 60 build/l2kv_bench_sampler > $OUT/sampler.log 2>&1
echo "sampler rc=$? at $SECONDS s" >> $OUT/summary.txt
for form in 0 1 2; do
  echo "== form $form" >> $OUT/gemv.log
  L2KV_EXP_GEMV_WARP_TILES=$form timeout 60 build/l2kv_bench_gemv --models llama3-8b qwen2.5-7b --rows 12 16 >> $OUT/gemv.log 2>&1
  echo "gemv form $form rc=$? at $SECONDS s" >> $OUT/summary.txt
done
steady() {  # label, env, model, rows...
  local label=$1 env=$2 model=$3; shift 3
  echo "== $label $model" >> $OUT/steady.log
  timeout 80 env $env build/l2kv bench --model synthetic:$model --variants split --mode steady --steady-reps 20 --steady-batch "$@" >> $OUT/steady.log 2>&1
  echo "steady $label $model rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for form in 0 1 2; do steady form$form L2KV_EXP_GEMV_WARP_TILES=$form llama3-8b 9 12 16; done
steady form1-gu16 "L2KV_EXP_GEMV_WARP_TILES=1 L2KV_EXP_GATE_UP_GEMV_ROWS=16" llama3-8b 9 12 16
for form in 0 1 2; do steady form$form L2KV_EXP_GEMV_WARP_TILES=$form qwen2.5-7b 9 12 16; done
steady form0-again L2KV_EXP_GEMV_WARP_TILES=0 llama3-8b 16
steady form1-again L2KV_EXP_GEMV_WARP_TILES=1 llama3-8b 16
for form in 0 1; do
  echo "== form $form" >> $OUT/profile.log
  L2KV_EXP_GEMV_WARP_TILES=$form timeout 40 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 5 --steady-batch 16 --profile >> $OUT/profile.log 2>&1
done
echo "profiles at $SECONDS s" >> $OUT/summary.txt
left=$((400 - SECONDS))
if [ $left -gt 150 ]; then
  timeout $left python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 16 1 --context 1024 --time-budget-s $((left - 15)) --json $OUT/peer.json > $OUT/peer.log 2>&1
  echo "peer rc=$? at $SECONDS s" >> $OUT/summary.txt
fi
cat $OUT/gpu.txt $OUT/summary.txt $OUT/tests.log
grep -E "rows" $OUT/sampler.log | head -12
grep -E "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-100
grep -E "step|points" $OUT/peer.log | tail -4
rm -f $OUT/t.log
cat $OUT/profile.log $OUT/peer.log >> $OUT/gemv.log 2>/dev/null; rm -f $OUT/profile.log $OUT/peer.log
gzip $OUT/gemv.log
