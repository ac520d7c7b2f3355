#!/usr/bin/env bash
# Two experiment patches against HEAD (4073c52): the expert GEMV on tensor cores
# (bench/experiments/expert_gemv_mma.patch) and the split kernel's older KV loaded before the PDL
# wait (bench/experiments/split_prewait_loads.patch). exp_both_tests holds both patches' code and
# tests; exp_mma_l2kv the expert patch; exp_both_l2kv both; l2kv is HEAD.
set -u
source build/setup_gpu.sh
cp build/run79.sh $OUT/run.sh
budget=560
run_group() {  # name, cap seconds, filter
  local left=$((budget - SECONDS - 5))
  local cap=$2; [ $left -lt $cap ] && cap=$left
  [ $cap -le 10 ] && { echo "$1: no time left" >> $OUT/summary.txt; return; }
  L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout $cap build/exp_both_tests --gtest_filter="$3" > $OUT/$1.log 2>&1
  local rc=$?
  echo "$1: rc=$rc in $SECONDS s; $(grep -cE '^\[       OK' $OUT/$1.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/$1.log) failed lines" >> $OUT/summary.txt
}
steady() {  # binary, model, log, batches...
  local bin=$1 model=$2 log=$3; shift 3
  local left=$((budget - SECONDS - 5)); [ $left -le 20 ] && { echo "$log: no time left" >> $OUT/summary.txt; return; }
  local cap=100; [ $left -lt $cap ] && cap=$left
  echo "== $bin" >> $OUT/$log
  timeout $cap build/$bin bench --model synthetic:$model --mode steady --variants split --steady-batch "$@" --steady-reps 10 >> $OUT/$log 2>&1
  echo "$log $bin rc=$? at $SECONDS s" >> $OUT/summary.txt
}
run_group expert_tests 100 '*ExpertGemv*:CudaModel.*'
run_group split_tests 120 '*Split*:DecodeAttention.*:SplitPdl*'
for r in 1 2; do
  steady l2kv qwen3-30b-a3b steady_qwen3moe.log 1 8 16 32 64
  steady exp_mma_l2kv qwen3-30b-a3b steady_qwen3moe.log 1 8 16 32 64
done
for r in 1 2; do
  steady l2kv llama3-8b steady_llama.log 1 16 64
  steady exp_both_l2kv llama3-8b steady_llama.log 1 16 64
done
cat $OUT/summary.txt
for f in expert_tests split_tests; do echo "== $f"; grep -hE "^\[  FAILED|Failure|Which is|Expected" $OUT/$f.log | head -12; done
grep -hE "^==|^steady" $OUT/steady_*.log
