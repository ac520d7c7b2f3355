#!/usr/bin/env bash
# rope_and_cache's head-group form (two pairs a thread, one sine and cosine for a group of heads)
# against the committed build (baseline/): the rope, fused-GEMV composition and model tests,
# memcheck; the whole prefill of 8 x 512, a decode step beside a 2,048-token chunk (--profile),
# steady decode at 64 and 128 rows (the nine-kernel layer runs rope_and_cache), 32K first token.
set -u
source build/setup_gpu.sh
cp build/run156.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 120 build/l2kv_tests --gtest_brief=1 --gtest_filter='*Rope*:ModelOps.*:*/ModelOps.*:*Fp8FusedOps*:*Fp8KvCache*:*SplitDecodePdl*:Fixtures/CudaModelFixture.*:*FusedLayerAgrees*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
L2KV_REQUIRE_GPU=1 timeout 60 $CS --tool memcheck --error-exitcode 9 build/l2kv_tests --gtest_brief=1 --gtest_filter='*/ModelOps.RopeAndCacheMatchesHostReference/*' > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? at $SECONDS s" >> $OUT/summary.txt
for r in 1 2; do
  for b in baseline/l2kv_bench_prefill l2kv_bench_prefill; do
    echo "== $b" >> $OUT/whole.log
    timeout 30 build/$b --reps 5 --attention-lengths 512 --attention-prompts 1 >> $OUT/whole.log 2>&1
    echo "whole $b rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
for b in baseline/l2kv l2kv; do
  echo "== $b" >> $OUT/mixed.log
  timeout 60 build/$b bench --model synthetic:llama3-8b --variants split --mode steady --steady-batch 16 --steady-chunk 2048 --steady-reps 20 --profile >> $OUT/mixed.log 2>&1
  echo "mixed $b rc=$? at $SECONDS s" >> $OUT/summary.txt
done
for r in 1 2; do
  for b in baseline/l2kv l2kv; do
    echo "== $b" >> $OUT/steady.log
    timeout 60 build/$b bench --model synthetic:llama3-8b --mode steady --steady-batch 64 128 --steady-context 1024 --variants split --steady-reps 30 2>&1 | grep steady >> $OUT/steady.log
    echo "steady $b at $SECONDS s" >> $OUT/summary.txt
  done
done
for b in baseline/l2kv l2kv; do
  (( SECONDS < 420 )) || break
  echo "== $b 32000" >> $OUT/ttft.log
  timeout 40 build/$b bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 32000 --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 2>&1 | grep -E "^e2e" >> $OUT/ttft.log
  echo "ttft $b at $SECONDS s" >> $OUT/summary.txt
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure" $OUT/tests.log | head -20
grep -E "ERROR SUMMARY" $OUT/memcheck.log
grep -E "==|prefill:|time split" $OUT/whole.log
grep -E "==|steady|rope_and_cache|add_rmsnorm|gated_mul|prefill_wgmma|split_decode" $OUT/mixed.log | cut -c1-150
cat $OUT/steady.log $OUT/ttft.log
gzip $OUT/tests.log $OUT/memcheck.log
