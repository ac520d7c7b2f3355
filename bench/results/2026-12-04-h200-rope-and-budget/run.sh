#!/usr/bin/env bash
# rope_and_cache with 8 tokens per block: its GPU tests; a steady step with a 2,048-token chunk
# (profile) and TTFT at 8K against the build before (prev/); the shared-prefix serving workload
# with caching on and off at --max-num-batched-tokens 2048 (default) and 8192.
set -u
source build/setup_gpu.sh
tar -xJf build/tok.tar.xz -C build
cp build/run24.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 120 build/l2kv_tests --gtest_filter='*ModelOps*:Fixtures/CudaModelFixture.*:*Fp8Kv*:*FusedLayer*:Variants/CudaEngine.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests.log | head -20
echo "tests done at $SECONDS s"
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b rep $rep" >> $OUT/chunk.log
    timeout 60 $bin bench --model synthetic:llama3-8b --mode steady --variants split --steady-batch 16 --steady-chunk 2048 --steady-reps 10 --profile 2>&1 | grep -E "^steady|rope_and_cache|prefill_wgmma" >> $OUT/chunk.log
    timeout 40 $bin bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 8192 --output-len 1 --concurrency 1 --num-prompts 3 2>&1 | tr '\r' '\n' | grep -iE "ttft" | tail -1 >> $OUT/chunk.log
  done
done
cat $OUT/chunk.log
echo "chunk done at $SECONDS s"
S="--num-prompts 256 --input-len 128 --shared-prefix-len 2048 --num-prefixes 1 --output-len 128 --max-concurrency 64 --vocab-size 128000 --no-progress"
port=8011
for budget in 2048 8192; do
  for mode in on off; do
    flag=""; [ $mode = off ] && flag=--no-enable-prefix-caching
    build/l2kv serve --model synthetic:llama3-8b --tokenizer build/tok_llama3 --port $port $flag --max-num-batched-tokens $budget > $OUT/serve.log 2>&1 &
    pid=$!
    for _ in $(seq 1 120); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 1; done
    echo "# budget $budget caching $mode" >> $OUT/shared_prefix.log
    timeout 90 build/l2kv bench-serve --base-url http://127.0.0.1:$port $S >> $OUT/shared_prefix.log 2>&1
    kill -INT $pid; wait $pid
    echo "at $SECONDS s"
  done
done
grep -E "^#|TTFT|throughput|Output" $OUT/shared_prefix.log | head -60
echo "all done at $SECONDS s"
