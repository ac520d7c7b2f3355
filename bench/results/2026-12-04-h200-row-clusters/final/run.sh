#!/usr/bin/env bash
# Row clusters for add_rmsnorm and the fp8 gated_mul against HEAD (8661f0e), same run: steady steps, a 2,048-token chunk, e2e at concurrency 64; gemv_fp8 at 16-64 rows.
set -u
source build/setup_gpu.sh
cp build/run69.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:Fp8FusedOpsErrors.*:*ModelOps*:CudaModel.*:Fixtures/*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|Failure" $OUT/gpu_tests.log | head -20
for round in 1 2; do
  for b in head new; do
    B=build/l2kv; [ $b = head ] && B=build/exp_l2kv_head
    for m in llama3-8b-fp8 llama3-8b; do
      echo "== $b $m" >> $OUT/bench.log
      timeout 100 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 1 16 64 --steady-context 1024 >> $OUT/bench.log 2>&1; echo "$b $m rc=$?" >> $OUT/bench.log
      if [ $round = 1 ]; then echo "== chunk $b $m" >> $OUT/bench.log
      timeout 100 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 16 --steady-context 1024 --steady-chunk 2048 >> $OUT/bench.log 2>&1; echo "chunk $b $m rc=$?" >> $OUT/bench.log; fi
      echo "== e2e $b $m" >> $OUT/bench.log
      timeout 100 $B bench --model synthetic:$m --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 64 >> $OUT/bench.log 2>&1; echo "e2e $b $m rc=$?" >> $OUT/bench.log
    done
  done
done
grep -aE "^== |^steady|e2e  |rc=[1-9]|rror" $OUT/bench.log | sed 's/.*\r//'
timeout 60 build/l2kv_bench_gemv --models llama3-8b-fp8 --rows 16 32 48 64 --reps 100 > $OUT/gemv.log 2>&1; echo "gemv rc=$?" >> $OUT/gemv.log
grep -aE "fp8 |rc=" $OUT/gemv.log | cut -c1-20,30-40,80-125
