#!/usr/bin/env bash
# One call: the Qwen3 fixture, GPU tests, steady steps of this build against 36f3bb5 and the
# compiled-PyTorch peer in the same run.
set -u
source build/setup_gpu.sh
timeout 100 python3 tests/model/make_fixtures.py --only qwen3-qknorm > $OUT/make_fixture.log 2>&1; echo "fixture rc=$?" >> $OUT/make_fixture.log
tail -4 $OUT/make_fixture.log; mkdir -p $OUT/fixture && cp -r tests/model/fixtures/qwen3-qknorm $OUT/fixture/ 2>/dev/null
L2KV_REQUIRE_GPU=1 timeout 215 build/l2kv_tests --gtest_filter='-*TokenizerOracle*:*ChatTemplateOracle*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|fused-layer|tests from .* ran" $OUT/gpu_tests.log | head -30
B="bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 64 128 256 --steady-context 1024 --variants split --steady-reps 50"
{ echo "# $(sed -n 2p $OUT/gpu.txt), $(date -u +%F). new = this build (nine-kernel layer, the default); base = 36f3bb5 (build/baseline). l2kv $B"
  echo "# new 1"; timeout 60 build/l2kv $B --json $OUT/steady_new.json 2>&1 | grep -E "steady|ceiling"
  echo "# base 1"; timeout 60 build/baseline/l2kv $B 2>&1 | grep -E "steady|ceiling"
} > $OUT/steady.log
cat $OUT/steady.log
ceiling=$(python3 -c "import json; print(json.load(open('$OUT/steady_new.json'))['ceiling_gbps'])")
timeout 190 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 64 256 --context 1024 --ceiling-gbps "$ceiling" --time-budget-s 180 --json $OUT/compiled_peer.json > $OUT/compiled_peer.log 2>&1
grep -E "step |points" $OUT/compiled_peer.log
{ echo "# new 2"; timeout 50 build/l2kv $B 2>&1 | grep -E "steady|ceiling"; } >> $OUT/steady.log
tail -6 $OUT/steady.log
