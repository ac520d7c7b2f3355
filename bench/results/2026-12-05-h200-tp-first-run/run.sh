#!/usr/bin/env bash
# Tensor parallelism on CUDA (ranks sharing the one GPU) and the regressions of earlier commits
# never run on a GPU. Each group in its own process: a hung collective traps after 60 s and would
# end every later test of its process.
set -u
source build/setup_gpu.sh
cp build/run75.sh $OUT/run.sh
budget=570
run_group() {  # name, cap seconds, filter
  local left=$((budget - SECONDS - 5))
  local cap=$2; [ $left -lt $cap ] && cap=$left
  [ $cap -le 10 ] && { echo "$1: no time left" >> $OUT/summary.txt; return; }
  L2KV_REQUIRE_GPU=1 timeout $cap build/l2kv_tests --gtest_filter="$3" > $OUT/$1.log 2>&1
  local rc=$?
  echo "$1: rc=$rc in $SECONDS s; $(grep -cE '^\[       OK' $OUT/$1.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/$1.log) failed lines" >> $OUT/summary.txt
}
run_group oneshot 90 'OneShotCollective.*'
run_group tp_single 120 'TensorParallelCudaEngineSingle.*'
run_group tp_engine 150 'SharedGpu/TensorParallelCudaEngine.*'
run_group prompt_logprobs 120 'Variants/CudaPromptLogprobs.*'
timeout 30 build/l2kv_bench_all_reduce --shared-gpu 2 --reps 5 --calls-per-graph 5 > $OUT/allreduce_shared.log 2>&1; echo "allreduce rc=$?" >> $OUT/summary.txt
run_group regress 400 '*Fp8FusedOps*:*ModelOps*:PagedV1*:GemvFp8.*:*FusedGemv*:CudaModel.*:CudaEngine*:*WeightStream*:DecodeAttention.*'
cat $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|rel_l2|agrees|trap|error" $OUT/*.log | head -60
