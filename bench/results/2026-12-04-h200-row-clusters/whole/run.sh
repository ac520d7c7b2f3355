#!/usr/bin/env bash
# add_rmsnorm's whole rows (prompts) at 4 vectors per thread as 8661f0e (whole) against 1-2 (chain) and 8661f0e (head): chunk steps, steady, e2e at concurrency 64.
set -u
source build/setup_gpu.sh
cp build/run72.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:*ModelOps*:CudaModel.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|Failure" $OUT/gpu_tests.log | head -20
for round in 1 2; do
  for b in head chain whole; do
    B=build/l2kv; [ $b = head ] && B=build/exp_l2kv_head; [ $b = chain ] && B=build/exp_l2kv_chain
    m=llama3-8b-fp8
    echo "== chunk $b $m" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 16 64 --steady-context 1024 --steady-chunk 0 2048 >> $OUT/bench.log 2>&1; echo "chunk $b $m rc=$?" >> $OUT/bench.log
    echo "== e2e $b $m" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:$m --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 64 >> $OUT/bench.log 2>&1; echo "e2e $b $m rc=$?" >> $OUT/bench.log
  done
  for b in head whole; do
    B=build/l2kv; [ $b = head ] && B=build/exp_l2kv_head
    echo "== e2e $b llama3-8b" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:llama3-8b --variants split --mode both --steady-batch 16 64 --steady-context 1024 --steady-chunk 0 2048 --input-len 512 --output-len 256 --concurrency 64 >> $OUT/bench.log 2>&1; echo "e2e $b llama3-8b rc=$?" >> $OUT/bench.log
  done
done
grep -aE "^== |^steady|e2e  |rc=[1-9]|rror" $OUT/bench.log | sed 's/.*\r//'
