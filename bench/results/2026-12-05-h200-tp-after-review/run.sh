#!/usr/bin/env bash
# Tensor parallelism on CUDA, ranks sharing the one GPU, after the review refactor (launch
# barriers, graphs captured and uploaded bucket by bucket), and the CUDA engine after the graph
# upload change.
set -u
source build/setup_gpu.sh
cp build/run78.sh $OUT/run.sh
budget=470
run_group() {  # name, cap seconds, filter
  local left=$((budget - SECONDS - 5))
  local cap=$2; [ $left -lt $cap ] && cap=$left
  [ $cap -le 10 ] && { echo "$1: no time left" >> $OUT/summary.txt; return; }
  L2KV_REQUIRE_GPU=1 timeout $cap build/l2kv_tests --gtest_filter="$3" > $OUT/$1.log 2>&1
  local rc=$?
  echo "$1: rc=$rc in $SECONDS s; $(grep -cE '^\[       OK' $OUT/$1.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/$1.log) failed lines" >> $OUT/summary.txt
}
run_group oneshot 80 'OneShotCollective.*'
run_group tp_single 80 'TensorParallelCudaEngineSingle.*'
run_group tp_engine 150 'SharedGpu/TensorParallelCudaEngine.*'
run_group prompt_logprobs 90 'Variants/CudaPromptLogprobs.*'
run_group engine 90 'Variants/CudaEngine.*:CudaEngineSingle.*'
cat $OUT/summary.txt
for f in oneshot tp_single tp_engine prompt_logprobs engine; do echo "== $f"; grep -hE "^\[  FAILED|Failure|Which is|Expected|exception|rel_l2|over . ranks|lost" $OUT/$f.log | head -24; done
grep -h "rel_l2" $OUT/tp_single.log
