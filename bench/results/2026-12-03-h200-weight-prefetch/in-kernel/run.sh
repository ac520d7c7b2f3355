#!/usr/bin/env bash
# Weight prefetch: GPU tests of the new code, steady steps with prefetch off and on (sizes,
# hints) and fp8 projections in one run, profiles, the compiled-PyTorch peer.
set -u
source build/setup_gpu.sh
F='*WeightPrefetch*:CudaModel*:*DecodeKernelsAgree*:*CudaRunner*:*Fixture*:*Gemv*:*ModelOps*'
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
B="bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 64 128 256 --steady-context 1024 --variants split --steady-reps 50"
{ echo "# $(sed -n 2p $OUT/gpu.txt), $(date -u +%F). l2kv $B --weight-prefetch P"
  for p in off 8 16 32 16+ops 16+gemv 32+evict_last 64 off; do
    echo "# weight-prefetch $p"; timeout 45 build/l2kv $B --weight-prefetch $p --json $OUT/steady_${p/+/_}.json 2>&1 | grep -E "steady|ceiling"
  done
} > $OUT/steady.log
{ echo "# fp8 projections"; timeout 60 build/l2kv ${B/llama3-8b/llama3-8b-fp8} --json $OUT/steady_fp8.json 2>&1 | grep -E "steady|ceiling"; } >> $OUT/steady.log
cat $OUT/steady.log
{ for p in off 16 fp8; do echo "# weight-prefetch $p"; m=llama3-8b; [[ $p == fp8 ]] && m=llama3-8b-fp8 p=off; timeout 40 build/l2kv bench --model synthetic:$m --mode steady --steady-batch 1 64 --steady-context 1024 --variants split --steady-reps 20 --profile --weight-prefetch $p 2>&1 | grep -vE "^l2kv:"; done; } > $OUT/profile.log
grep -E "^#|steady|qkv|  o |gate_up|down|lm_head|all " $OUT/profile.log | head -40


ceiling=$(python3 -c "import json; print(json.load(open('$OUT/steady_off.json'))['ceiling_gbps'])")
timeout 200 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 16 128 --context 1024 --ceiling-gbps "$ceiling" --time-budget-s 190 --json $OUT/compiled_peer.json > $OUT/compiled_peer.log 2>&1
grep -E "step |points" $OUT/compiled_peer.log
{ echo "# after the peer"; for p in off 16; do echo "# weight-prefetch $p"; timeout 45 build/l2kv $B --weight-prefetch $p 2>&1 | grep -E "steady|ceiling"; done; } >> $OUT/steady.log
tail -14 $OUT/steady.log
