#!/usr/bin/env bash
# fp8 projections after the GEMV change (8 loads in flight per row and lane, row groups only up
# to 32 rows): GPU tests, steady steps bf16 and fp8 in one run, a profile, the compiled-PyTorch
# peer at batch 128 and 256.
set -u
source build/setup_gpu.sh
F='GemvFp8*:CudaModel*:*DecodeKernelsAgree*:*Gemv*'
L2KV_REQUIRE_GPU=1 timeout 120 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran|fp8" $OUT/gpu_tests.log | head -30
B="bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 32 64 128 256 --steady-context 1024 --variants split --steady-reps 50"
{ echo "# $(sed -n 2p $OUT/gpu.txt), $(date -u +%F). l2kv $B, and with synthetic:llama3-8b-fp8"
  for m in llama3-8b llama3-8b-fp8 llama3-8b llama3-8b-fp8; do
    echo "# $m"; timeout 60 build/l2kv ${B/llama3-8b/$m} 2>&1 | grep -E "steady|ceiling"
  done
} > $OUT/steady.log
cat $OUT/steady.log
timeout 30 build/l2kv bench --model synthetic:llama3-8b-fp8 --mode steady --steady-batch 1 16 --steady-context 1024 --variants split --steady-reps 20 --profile 2>&1 | grep -vE "^l2kv:" > $OUT/profile_fp8.log
grep -E "steady|qkv|  o |gate_up|down|lm_head|all |x32|x96" $OUT/profile_fp8.log | head -30
ceiling=$(grep -m1 -oE "ceiling [0-9]+" $OUT/steady.log | grep -oE "[0-9]+")
timeout 200 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 128 256 --context 1024 --ceiling-gbps "$ceiling" --time-budget-s 190 --json $OUT/compiled_peer.json > $OUT/compiled_peer.log 2>&1
grep -E "step |points" $OUT/compiled_peer.log
{ echo "# after the peer: llama3-8b"; timeout 45 build/l2kv $B 2>&1 | grep -E "steady|ceiling"; } >> $OUT/steady.log
tail -8 $OUT/steady.log
