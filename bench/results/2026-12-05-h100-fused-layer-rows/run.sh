#!/usr/bin/env bash
# Second run: the residual epilogue's residual loaded after the wait, weighted_silu_mul's loads
# together. GPU tests; batch 1 of 055b169 (baseline), the first run's build (prev) and this one,
# alternated twice; the fused layer at 2-16 rows (prev and this build) against nine kernels;
# profiles; the compiled-PyTorch peer at 1, 16 and 64 with this build's steps after it.
set -u
source build/setup_gpu.sh
cp build/run94.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 200 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv.*:Dtypes/GemvDtype.*:Dtypes/ModelOps.*:Fixtures/CudaModelFixture.*:CudaEngine*:CudaModel.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
steady() {  # binary, log, model, args...
  local bin=$1 log=$2 model=$3; shift 3
  echo "== $bin $model $*" >> $OUT/$log
  timeout 90 build/$bin bench --model synthetic:$model --mode steady --variants split --steady-reps 10 "$@" >> $OUT/$log 2>&1
  echo "$log $bin $model $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for b in baseline/l2kv prev/l2kv l2kv; do steady $b b1.log llama3-8b --steady-batch 1; done; done
for b in baseline/l2kv prev/l2kv l2kv; do steady $b b1.log qwen2.5-7b --steady-batch 1; steady $b b1.log llama2-7b --steady-batch 1; done
for r in 1 2; do
  steady l2kv rows.log llama3-8b --steady-batch 2 4 8 12 16 --fused-layer-max-rows 1
  steady prev/l2kv rows.log llama3-8b --steady-batch 2 4 8 12 16 --fused-layer-max-rows 16
  steady l2kv rows.log llama3-8b --steady-batch 2 4 8 12 16 --fused-layer-max-rows 16
done
for f in 1 16; do for m in qwen2.5-7b llama2-7b; do steady l2kv rows.log $m --steady-batch 2 4 8 16 --fused-layer-max-rows $f; done; done
for b in 1 16; do steady l2kv profile.log llama3-8b --steady-batch $b --fused-layer-max-rows 16 --profile; done
C=$(grep -m1 -oE "ceiling [0-9]+" $OUT/b1.log | grep -oE "[0-9]+")
left=$((560 - SECONDS))
if ((left > 120)); then
  timeout $left python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 16 64 --context 1024 ${C:+--ceiling-gbps $C} --time-budget-s $((left - 20)) > $OUT/peer.log 2>&1
  echo "peer rc=$? at $SECONDS s" >> $OUT/summary.txt
  steady l2kv after_peer.log llama3-8b --steady-batch 1 16 64 --fused-layer-max-rows 16
  steady l2kv after_peer.log llama3-8b --steady-batch 1 16 64 --fused-layer-max-rows 1
fi
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|fused-layer\]" $OUT/tests.log | head -20
grep -hE "^==|^steady" $OUT/b1.log $OUT/rows.log | sed 's/  */ /g' | cut -c1-100
grep -vE "^l2kv:|gap " $OUT/profile.log | head -40
grep -E "step|points" $OUT/peer.log | tail -8
grep -hE "^==|^steady" $OUT/after_peer.log | sed 's/  */ /g' | cut -c1-100
