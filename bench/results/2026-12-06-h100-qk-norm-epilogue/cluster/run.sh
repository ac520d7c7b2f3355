#!/usr/bin/env bash
# Third form of Qwen3's q/k norm in the QKV GEMV's RoPE epilogue: a head's blocks launched as one
# cluster add up its sums of squares through distributed shared memory, each block finishing its
# own pairs (no staging, no atomics). baseline/ = b4ba88f (QKV store + rope_and_cache). Tests,
# compute-sanitizer on the new test, steady steps alternated twice, profiles at 2 and 4 rows.
set -u
source build/setup_gpu.sh
cp build/run126.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 330 build/l2kv_tests --gtest_filter='*FusedGemv*:Fixtures/CudaModelFixture.*:CudaModel.*:*ModelOps.Rope*:*Fp8FusedOps.Rope*:SharedGpu/TensorParallelCudaEngine.*qwen3*:Variants/CudaEngine*:CudaEngineSingle.*:*EngineWindows.*:*SplitDecodePdl*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
for tool in memcheck racecheck synccheck; do
  L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 120 $SAN --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='Dtypes/FusedGemv.QkNormRopeCacheEpilogueMatchesComposition/bf16' > $OUT/sanitizer_$tool.log 2>&1
  echo "$tool rc=$? at $SECONDS s ($SAN)" >> $OUT/summary.txt
done
steady() {  # binary model batches...
  local b=$1 m=$2; shift 2
  echo "== $b $m $*" >> $OUT/steady.log
  timeout 90 build/$b bench --model synthetic:$m --variants split --mode steady --steady-reps 20 --steady-batch "$@" >> $OUT/steady.log 2>&1
  echo "steady $b $m rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do steady baseline/l2kv qwen3-8b 1 2 4 8 12 16; steady l2kv qwen3-8b 1 2 4 8 12 16; done
for r in 1 2; do steady baseline/l2kv qwen3-30b-a3b 1 8 16; steady l2kv qwen3-30b-a3b 1 8 16; done
steady baseline/l2kv llama3-8b 1 16; steady l2kv llama3-8b 1 16
for n in 2 4; do
  echo "== profile qwen3-8b $n" >> $OUT/profile.log
  timeout 60 build/l2kv bench --model synthetic:qwen3-8b --variants split --mode steady --steady-reps 20 --steady-batch $n --profile >> $OUT/profile.log 2>&1
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|differ" $OUT/tests.log | head -20
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/sanitizer_*.log | head
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-100
grep -E "^==|_kernel|profile:|^    (qkv|o) " $OUT/profile.log | cut -c1-100
