#!/usr/bin/env bash
# Persistent ring GEMV (bench/experiments/persistent_ring_gemv.patch + experiment switches):
# tests, then steady steps against the build before (prev/), then the peer at batch 1.
set -u
source build/setup_gpu.sh
cp build/run1.sh $OUT/run.sh
F='Dtypes/GemvDtype.*:Dtypes/FusedGemv.*:FusedGemvSupports.*:GemvFp8.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*'
L2KV_REQUIRE_GPU=1 timeout 120 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
echo "tests done at $SECONDS s"
S="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 30 --steady-batch 1 2 4 8 16"
for rep in 1 2; do
  echo "# prev build (54f677b)" >> $OUT/steady.log
  timeout 60 build/prev/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  echo "# persistent ring, gate_up 32-feature units (PERSIST=1 WIDE=1)" >> $OUT/steady.log
  L2KV_GEMV_PERSIST=1 L2KV_GEMV_WIDE=1 timeout 60 build/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  echo "# persistent ring, 16-feature units (PERSIST=1 WIDE=0)" >> $OUT/steady.log
  L2KV_GEMV_PERSIST=1 L2KV_GEMV_WIDE=0 timeout 60 build/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  echo "# one unit per block, as before, in this build (PERSIST=0 WIDE=1)" >> $OUT/steady.log
  L2KV_GEMV_PERSIST=0 L2KV_GEMV_WIDE=1 timeout 60 build/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  echo "steady rep $rep done at $SECONDS s"
done
cat $OUT/steady.log
P="--model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 20 --steady-batch 1 --profile"
L2KV_GEMV_PERSIST=1 L2KV_GEMV_WIDE=1 timeout 50 build/l2kv bench $P > $OUT/profile_persist_wide.log 2>&1
L2KV_GEMV_PERSIST=1 L2KV_GEMV_WIDE=0 timeout 50 build/l2kv bench $P > $OUT/profile_persist_narrow.log 2>&1
grep -E "^steady|^    [a-z]" $OUT/profile_persist_*.log | grep -v gap | head -40
echo "profiles done at $SECONDS s"
left=$((585 - SECONDS))
if [ $left -gt 100 ]; then
  C=$(grep -oE "ceiling [0-9]+ GB/s" $OUT/profile_persist_wide.log | head -1 | awk "{print \$2}")
  timeout $left python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 --context 1024 ${C:+--ceiling-gbps $C} --time-budget-s $((left - 10)) > $OUT/peer.log 2>&1
  tail -5 $OUT/peer.log
fi
echo "all done at $SECONDS s"
