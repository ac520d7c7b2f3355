#!/usr/bin/env bash
# Prompt-sized steps: the fp8 gated_mul's codes by the op + quantize_rows_fp8 from 256 rows on (chain) against the fused kernel (prev, af8903c) and 8661f0e (head): 2,048-token chunk steps, e2e at concurrency 64, profiles.
set -u
source build/setup_gpu.sh
cp build/run71.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:*ModelOps*:CudaModel.*:Fixtures/*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|Failure" $OUT/gpu_tests.log | head -20
for round in 1 2; do
  for b in head prev chain; do
    B=build/l2kv; [ $b = head ] && B=build/exp_l2kv_head; [ $b = prev ] && B=build/exp_l2kv_prev
    m=llama3-8b-fp8
    echo "== chunk $b $m" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 16 64 --steady-context 1024 --steady-chunk 0 2048 >> $OUT/bench.log 2>&1; echo "chunk $b $m rc=$?" >> $OUT/bench.log
    echo "== e2e $b $m" >> $OUT/bench.log
    timeout 100 $B bench --model synthetic:$m --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 64 >> $OUT/bench.log 2>&1; echo "e2e $b $m rc=$?" >> $OUT/bench.log
  done
  echo "== e2e chain llama3-8b" >> $OUT/bench.log
  timeout 100 build/l2kv bench --model synthetic:llama3-8b --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 64 >> $OUT/bench.log 2>&1; echo "e2e chain llama3-8b rc=$?" >> $OUT/bench.log
done
grep -aE "^== |^steady|e2e  |rc=[1-9]|rror" $OUT/bench.log | sed 's/.*\r//'
for b in head chain; do
  B=build/l2kv; [ $b = head ] && B=build/exp_l2kv_head
  echo "== $b" >> $OUT/profile.log
  timeout 100 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 16 --steady-context 1024 --steady-chunk 2048 --profile >> $OUT/profile.log 2>&1
done
sed 's/.*\r//' $OUT/profile.log | grep -E "^== |^steady|_kernel " | head -30
