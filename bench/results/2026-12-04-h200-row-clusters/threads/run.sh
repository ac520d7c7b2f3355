#!/usr/bin/env bash
# The fp8 gated_mul's blocks at 512 threads (one block per 14336-wide row at prompt sizes) against 256 (two) and HEAD 8661f0e: steady steps, a 2,048-token chunk, e2e at concurrency 64.
set -u
source build/setup_gpu.sh
cp build/run70.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:*ModelOps*:CudaModel.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|Failure" $OUT/gpu_tests.log | head -20
for round in 1 2; do
  for b in head new gm256; do
    B=build/l2kv; [ $b = head ] && B=build/exp_l2kv_head; [ $b = gm256 ] && B=build/exp_l2kv_gm256
    m=llama3-8b-fp8
    echo "== $b $m" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 16 64 --steady-context 1024 >> $OUT/bench.log 2>&1; echo "$b $m rc=$?" >> $OUT/bench.log
    echo "== chunk $b $m" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 16 --steady-context 1024 --steady-chunk 2048 >> $OUT/bench.log 2>&1; echo "chunk $b $m rc=$?" >> $OUT/bench.log
    echo "== e2e $b $m" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:$m --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 64 >> $OUT/bench.log 2>&1; echo "e2e $b $m rc=$?" >> $OUT/bench.log
  done
  for b in head new; do
    B=build/l2kv; [ $b = head ] && B=build/exp_l2kv_head
    echo "== e2e $b llama3-8b" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:llama3-8b --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 64 >> $OUT/bench.log 2>&1; echo "e2e $b llama3-8b rc=$?" >> $OUT/bench.log
  done
done
grep -aE "^== |^steady|e2e  |rc=[1-9]|rror" $OUT/bench.log | sed 's/.*\r//'
