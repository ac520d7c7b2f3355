#!/usr/bin/env bash
# The first GPU run of 2026-12-07's second session: tests not yet run on a GPU (the prefill grid
# at 32-token blocks, the windowed-KV-group and preemption tests pinned to 16-token blocks);
# the prompt-bucket GEMM tuning test; whole prefill of 8 x 512 at 32-token blocks with
# cuBLASLt's first choice (--gemm-tune-prompt-rows 0) against the bucket-timed algorithms
# (default), alternated twice; the final order rule in the attention sweep beside the SDPA
# peers; the first token of a 32K prompt, both tunings; one profiled step with a 4,096-token chunk.
set -u
source build/setup_gpu.sh
cp build/run01.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 120 build/l2kv_tests --gtest_brief=1 --gtest_filter='*PrefillAttention*:CudaEngineSingle.*:*Preempt*:*PromptBucket*:*GemmRouting*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure|tests ran" $OUT/tests.log | head -20 >> $OUT/summary.txt
for r in 1 2; do
  for t in 0 16384; do
    echo "== prompt tune rows $t" >> $OUT/prefill.log
    timeout 60 build/l2kv_bench_prefill --gemm-tune-prompt-rows $t --attention-lengths 512 --attention-prompts 1 >> $OUT/prefill.log 2>&1
    echo "prefill tune $t rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
timeout 60 build/l2kv_bench_prefill --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 > $OUT/sweep.log 2>&1
echo "sweep rc=$? at $SECONDS s" >> $OUT/summary.txt
timeout 80 python3 bench/model/sdpa_prefill_peers.py --lengths 1024 2048 8192 32768 --prompts 1 4 > $OUT/peers.log 2>&1
echo "sdpa rc=$? at $SECONDS s" >> $OUT/summary.txt
for t in 0 16384; do
  (( SECONDS < 420 )) || break
  echo "== ttft prompt tune rows $t" >> $OUT/engine.log
  timeout 45 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 32000 --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 --gemm-tune-prompt-rows $t 2>&1 | tr '\r' '\n' | grep -iE "ttft|error" >> $OUT/engine.log
  echo "ttft $t at $SECONDS s" >> $OUT/summary.txt
done
timeout 30 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 16 --output-len 1 --concurrency 4 --num-prompts 4 2>&1 | tr '\r' '\n' | grep -iE 'max running|error' >> $OUT/engine.log
echo "max running rc=$? at $SECONDS s" >> $OUT/summary.txt
(( SECONDS < 500 )) && timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 --steady-context 512 --steady-chunk 4096 --profile > $OUT/profile.log 2>&1
echo "profile rc=$? at $SECONDS s" >> $OUT/summary.txt
cat $OUT/peers.log >> $OUT/sweep.log; rm $OUT/peers.log
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log
cat $OUT/summary.txt
grep -E "^==|prefill|time split" $OUT/prefill.log
grep -E "wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/; s/, 32:8 heads, block 32//'
grep -E "cudnn|flash" $OUT/sweep.log | head -20
cat $OUT/engine.log
head -60 $OUT/profile.log
