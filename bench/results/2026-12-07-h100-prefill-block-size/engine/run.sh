#!/usr/bin/env bash
# KV blocks of 32 tokens by default, end to end: the preemption test (its pool now in 16-token
# blocks) and the engine/runner GPU tests; time to first token of 8K and 32K prompts and steady
# decode (synthetic llama3-8b, 1-256 rows) at --block-size 16 and 32 on the same binary,
# alternated; the whole prefill of 8 x 512; a mixed step (16 decode rows beside a 2,048-token
# chunk) with the SM clock and power sampled every 20 ms; the compiled-PyTorch peer at batch 1
# and 64 with l2kv after it.
set -u
source build/setup_gpu.sh
cp build/run03.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 90 build/l2kv_tests --gtest_brief=1 --gtest_filter='CudaEngineSingle.*:Variants/CudaEngine*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure|preemptions" $OUT/tests.log | head -20 >> $OUT/summary.txt
for r in 1 2; do
  for b in 16 32; do
    echo "== ttft block $b" >> $OUT/ttft.log
    for n in 8000 32000; do
      timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len $n --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 --block-size $b 2>&1 | tr '\r' '\n' | grep -iE "ttft|error" >> $OUT/ttft.log
    done
    echo "ttft $b at $SECONDS s" >> $OUT/summary.txt
    echo "== steady block $b" >> $OUT/steady.log
    timeout 70 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 64 128 256 --steady-context 1024 --variants split --steady-reps 30 --block-size $b 2>&1 | grep -E "steady|ceiling" >> $OUT/steady.log
    echo "steady $b at $SECONDS s" >> $OUT/summary.txt
  done
done
timeout 40 build/l2kv_bench_prefill --reps 5 --attention-lengths 512 --attention-prompts 1 > $OUT/prefill.log 2>&1
echo "whole prefill rc=$? at $SECONDS s" >> $OUT/summary.txt
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active --format=csv -lms 20 > $OUT/clocks.csv 2>&1 &
SMI=$!
timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 16 --steady-chunk 0 2048 --steady-reps 10 --profile --variants split > $OUT/mixed.log 2>&1
echo "mixed rc=$? at $SECONDS s" >> $OUT/summary.txt
kill $SMI
if (( SECONDS < 380 )); then
  timeout 170 python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 64 --context 1024 --time-budget-s 120 --json $OUT/peer.json > $OUT/peer.log 2>&1
  echo "peer rc=$? at $SECONDS s" >> $OUT/summary.txt
  timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 64 --steady-context 1024 --variants split --steady-reps 30 2>&1 | grep steady > $OUT/after_peer.log
fi
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log $OUT/clocks.csv
cat $OUT/summary.txt
cat $OUT/ttft.log; grep -E "^==|^steady" $OUT/steady.log
grep -iE "prefill:|time split" $OUT/prefill.log
grep -E "^steady|split_decode_kernel|prefill_wgmma" $OUT/mixed.log
grep -E "step .* ms" $OUT/peer.log | cut -c1-150; cat $OUT/after_peer.log 2>/dev/null
