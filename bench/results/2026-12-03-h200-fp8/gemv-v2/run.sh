#!/usr/bin/env bash
# fp8 GEMV with integer widening, and cuBLASLt timing 32 candidates instead of 8 (base: the
# build before, a262c98): GPU tests, steady steps bf16 (new, base) and fp8 in one run, a profile.
set -u
source build/setup_gpu.sh
F='GemvFp8*:CudaModel.Fp8*:*DecodeKernelsAgree*'
L2KV_REQUIRE_GPU=1 timeout 60 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran|fp8|Failure" $OUT/gpu_tests.log | head -30
B="bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 32 64 128 256 --steady-context 1024 --variants split --steady-reps 50"
{ echo "# $(sed -n 2p $OUT/gpu.txt), $(date -u +%F). l2kv $B, and with synthetic:llama3-8b-fp8; base = a262c98"
  for run in 1; do
    echo "# new llama3-8b"; timeout 60 build/l2kv $B 2>&1 | grep -E "steady|ceiling"
    echo "# base llama3-8b"; timeout 60 build/baseline/l2kv $B 2>&1 | grep -E "steady|ceiling"
    echo "# new llama3-8b-fp8"; timeout 60 build/l2kv ${B/llama3-8b/llama3-8b-fp8} 2>&1 | grep -E "steady|ceiling"
  done
} > $OUT/steady.log
cat $OUT/steady.log
timeout 20 build/l2kv bench --model synthetic:llama3-8b-fp8 --mode steady --steady-batch 1 16 --steady-context 1024 --variants split --steady-reps 20 --profile 2>&1 | grep -vE "^l2kv:" > $OUT/profile_fp8.log
grep -E "steady|qkv|  o |gate_up|down|lm_head|all " $OUT/profile_fp8.log | head -30
tar -xJf build/tok_llama3.tar.xz -C build; mkdir -p $OUT/prefix; timeout 170 scripts/bench_prefix_cache.sh $OUT/prefix build/tok_llama3 > $OUT/prefix/run.log 2>&1; echo "prefix rc=$?" >> $OUT/prefix/run.log
tail -40 $OUT/prefix/run.log
