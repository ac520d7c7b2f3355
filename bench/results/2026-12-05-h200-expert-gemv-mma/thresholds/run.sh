#!/usr/bin/env bash
# Mixtures of experts after the tensor-core expert GEMV: the MoE model test with kMoeEarlyLaunch
# on (exp_pdl_tests); steady decode of Qwen3-30B-A3B (1-64) and Mixtral-8x7B (1-32): HEAD
# (exp_head) against exp_pdl (the switch on) and exp_notrig (HEAD without the launch_dependents
# triggers in the MoE kernels), alternated twice; Mixtral with up to 8 slots per expert on the
# GEMV (exp_large8); Qwen3-MoE at 128/256 rows with up to 32 (exp_many32).
set -u
source build/setup_gpu.sh
tar -C build -xJf build/moe_bundle.tar.xz
cp build/run83.sh $OUT/run.sh
budget=560
steady() {  # binary, model, log, batches...
  local bin=$1 model=$2 log=$3; shift 3
  local left=$((budget - SECONDS - 5)); [ $left -le 20 ] && { echo "$log: no time left" >> $OUT/summary.txt; return; }
  local cap=80; [ $left -lt $cap ] && cap=$left
  echo "== $bin" >> $OUT/$log
  timeout $cap build/$bin bench --model synthetic:$model --mode steady --variants split --steady-batch "$@" --steady-reps 10 >> $OUT/$log 2>&1
  echo "$log $bin rc=$? at $SECONDS s" >> $OUT/summary.txt
}
L2KV_REQUIRE_GPU=1 timeout 60 build/exp_pdl_tests --gtest_filter='CudaModel.MixtureOfExperts*:*ExpertGemv*' > $OUT/moe_pdl_tests.log 2>&1; echo "moe_pdl tests rc=$? at $SECONDS s" >> $OUT/summary.txt
for r in 1 2; do
  for b in exp_head_l2kv exp_pdl_l2kv exp_notrig_l2kv; do steady $b qwen3-30b-a3b steady_qwen3moe.log 1 8 16 32 64; done
done
for r in 1 2; do
  for b in exp_head_l2kv exp_pdl_l2kv exp_large8_l2kv; do steady $b mixtral-8x7b steady_mixtral.log 1 8 16 32; done
done
for b in exp_head_l2kv exp_many32_l2kv; do steady $b qwen3-30b-a3b steady_qwen3moe_large.log 128 256; done
cat $OUT/summary.txt
grep -hE "^\[  FAILED|Failure" $OUT/moe_pdl_tests.log | head
grep -hE "^==|^steady" $OUT/steady_*.log
