#!/usr/bin/env bash
# The decode rows of mixed steps after the prefill kernel (split kernel in its tail under PDL)
# and the O / down products added into the residual on cuBLASLt, against baseline/ (f4ed5a7):
# GPU tests of the new tree (GEMM, prefill, split, model, engine), memcheck and racecheck of the
# new mixed-step and accumulate tests, then a mixed step (16 decode rows beside a 2,048-token
# chunk) profiled on both trees and on the new one with the split kernel prefetching whole
# slices into L2.
set -u
source build/setup_gpu.sh
cp build/run201.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 170 build/l2kv_tests --gtest_brief=1 --gtest_filter='*GemvDtype*:*PrefillAttention*:*PrefillWorkList*:*SplitDecode*:Fixtures/CudaModelFixture.*:CudaModel.*:Variants/CudaEngine*:CudaEngineSingle.*:*CudaRunner*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure|tests ran" $OUT/tests.log | head -30 >> $OUT/summary.txt
grep -E "wgmma mixed step|gemma3 mixed" $OUT/tests.log >> $OUT/summary.txt
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer | head -1)
for tool in memcheck racecheck; do
  (( SECONDS < 300 )) || break
  echo "### $tool" >> $OUT/sanitizer.log
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 60 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_brief=1 --gtest_filter='CudaModel.MixedStepOnTheWgmmaKernelMatchesTheCpuModel:*/GemvDtype.GemmAccumulatesIntoFloat32/bf16' >> $OUT/sanitizer.log 2>&1
  echo "$tool rc=$? at $SECONDS s" >> $OUT/summary.txt
done
grep -E "ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer.log >> $OUT/summary.txt
mixed() {  # label binary extra-flags...
  local label=$1 bin=$2; shift 2
  (( SECONDS < 540 )) || return
  echo "== mixed $label" >> $OUT/steady.log
  timeout 45 build/$bin bench --model synthetic:llama3-8b --mode steady --steady-batch 16 \
    --steady-chunk 0 2048 --steady-reps 10 --profile --variants "$@" >> $OUT/steady.log 2>&1
  echo "mixed $label rc=$? at $SECONDS s" >> $OUT/summary.txt
}
mixed baseline baseline/l2kv split
mixed new l2kv split
mixed new-prefetch16 l2kv split:on:16+pdl
mixed baseline-2 baseline/l2kv split
mixed new-2 l2kv split
if (( SECONDS < 560 )); then  # the gap after the embedding: does it follow the chunk's size?
  echo "== mixed new chunk 512" >> $OUT/steady.log
  timeout 30 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 16 \
    --steady-chunk 512 --steady-reps 10 --profile --variants split >> $OUT/steady.log 2>&1
  echo "mixed chunk 512 rc=$? at $SECONDS s" >> $OUT/summary.txt
fi
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/tests.log $OUT/sanitizer.log
cat $OUT/summary.txt
grep -E "^==|chunk=|split_decode_kernel|prefill_wgmma|add_rmsnorm|gap .*embed_kernel ->" $OUT/steady.log | head -70
