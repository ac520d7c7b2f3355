#!/usr/bin/env bash
# rope_and_cache on 16-byte vectors (rope_cache_vectors, a thread per token, head and 8 pairs)
# against baseline/ (the head-group kernel, same tree otherwise): GPU tests of RoPE, the fp8 KV
# cache, the split kernel's PDL read order, model fixtures, CudaModel and the engine, memcheck of
# the rope test; whole prefill of 8 x 512 (timed without per-op events), the prompt-bucket GEMM
# tuning off and on, and steady decode at 64 and 128 rows, alternated; a profiled step with a
# 4,096-token chunk; the attention sweep with the final order rule (1K-32K, one and four prompts).
set -u
source build/setup_gpu.sh
cp build/run03.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 150 build/l2kv_tests --gtest_brief=1 --gtest_filter='*RopeAndCache*:*RopeVectorForm*:*RopeCacheEpilogue*:*Fp8Kv*:SplitDecodePdl.*:Fixtures/CudaModelFixture.*:CudaModel.*:*PromptBucket*:CudaEngineSingle.*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure|tests ran" $OUT/tests.log | head -20 >> $OUT/summary.txt
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 40 $CS --tool memcheck --error-exitcode 9 build/l2kv_tests --gtest_brief=1 --gtest_filter='*RopeAndCacheMatchesHostReference*:*RopeVectorForm*' > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "ERROR SUMMARY" $OUT/memcheck.log >> $OUT/summary.txt
for r in 1 2; do
  for b in baseline/l2kv_bench_prefill l2kv_bench_prefill; do
    echo "== $b" >> $OUT/prefill.log
    timeout 60 build/$b --attention-lengths 512 --attention-prompts 1 >> $OUT/prefill.log 2>&1
    echo "prefill $b rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
  echo "== l2kv_bench_prefill --gemm-tune-prompt-rows 0" >> $OUT/prefill.log
  timeout 60 build/l2kv_bench_prefill --gemm-tune-prompt-rows 0 --attention-lengths 512 --attention-prompts 1 >> $OUT/prefill.log 2>&1
  echo "prefill untuned rc=$? at $SECONDS s" >> $OUT/summary.txt
done
(( SECONDS < 300 )) && timeout 50 build/l2kv_bench_prefill --batch 1 --prompt 64 --reps 1 --attention-lengths 1024 2048 8192 32768 --attention-prompts 1 4 > $OUT/sweep.log 2>&1
echo "sweep rc=$? at $SECONDS s" >> $OUT/summary.txt
for r in 1 2; do
  for b in baseline/l2kv l2kv; do
    (( SECONDS < 370 )) || break 2
    echo "== $b" >> $OUT/steady.log
    timeout 60 build/$b bench --model synthetic:llama3-8b --mode steady --steady-batch 64 128 --steady-context 1024 2>&1 | grep -E "^steady|error" >> $OUT/steady.log
    echo "steady $b at $SECONDS s" >> $OUT/summary.txt
  done
done
(( SECONDS < 400 )) && timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 --steady-context 512 --steady-chunk 4096 --profile 2>&1 | head -20 > $OUT/profile.log
echo "profile at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log $OUT/memcheck.log
cat $OUT/summary.txt
grep -E "^==|prefill|time split" $OUT/prefill.log | grep -v "prefill attention"
grep wgmma $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/; s/, 32:8 heads, block 32//'
cat $OUT/steady.log
cat $OUT/profile.log
