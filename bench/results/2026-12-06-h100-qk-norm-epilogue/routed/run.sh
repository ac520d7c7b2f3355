#!/usr/bin/env bash
# The cluster form of Qwen3's q/k norm in the QKV GEMV's RoPE epilogue as routed: up to 12 rows,
# not under tensor parallelism (ranks sharing a GPU timed out beside it). baseline/ = b4ba88f.
# The GEMV, model and engine tests (quick sizes), then steady steps alternated twice.
set -u
source build/setup_gpu.sh
cp build/run127.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 330 build/l2kv_tests --gtest_filter='*FusedGemv*:Fixtures/CudaModelFixture.*:CudaModel.*:*ModelOps.Rope*:*Fp8FusedOps.Rope*:SharedGpu/TensorParallelCudaEngine.*qwen3*:Variants/CudaEngine*:CudaEngineSingle.*:*EngineWindows.*:*SplitDecodePdl*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
steady() {  # binary model batches...
  local b=$1 m=$2; shift 2
  echo "== $b $m $*" >> $OUT/steady.log
  timeout 90 build/$b bench --model synthetic:$m --variants split --mode steady --steady-reps 20 --steady-batch "$@" >> $OUT/steady.log 2>&1
  echo "steady $b $m rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do steady baseline/l2kv qwen3-8b 1 2 8 12 16; steady l2kv qwen3-8b 1 2 8 12 16; done
for r in 1 2; do steady baseline/l2kv qwen3-30b-a3b 1 8 16; steady l2kv qwen3-30b-a3b 1 8 16; done
steady baseline/l2kv llama3-8b 1 16; steady l2kv llama3-8b 1 16
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|differ" $OUT/tests.log | head -20; gzip $OUT/tests.log
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-100
