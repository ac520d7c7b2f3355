#!/usr/bin/env bash
# Qwen3's q/k norm in the QKV GEMV's RoPE epilogue (the head's last block normalizes, rotates and
# stores it; no rope_and_cache kernel at 1-16 rows). baseline/ = b4ba88f. The GEMV and model
# tests (quick sizes), then steady steps alternated twice: qwen3-8b, qwen3-30b-a3b, gemma3-12b
# (also q/k norms), llama3-8b (no q/k norm: unchanged), and one profiled step of each Qwen3.
set -u
source build/setup_gpu.sh
cp build/run123.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 330 build/l2kv_tests --gtest_filter='*FusedGemv*:Fixtures/CudaModelFixture.*:CudaModel.*:*ModelOps.Rope*:*Fp8FusedOps.Rope*:SharedGpu/TensorParallelCudaEngine.*qwen3*:Variants/CudaEngine*:CudaEngineSingle.*:*EngineWindows.*:*SplitDecodePdl*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/tests.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/tests.log) failed" >> $OUT/summary.txt
steady() {  # binary model batches...
  local b=$1 m=$2; shift 2
  echo "== $b $m $*" >> $OUT/steady.log
  timeout 90 build/$b bench --model synthetic:$m --variants split --mode steady --steady-reps 20 --steady-batch "$@" >> $OUT/steady.log 2>&1
  echo "steady $b $m rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do steady baseline/l2kv qwen3-8b 1 4 8 16; steady l2kv qwen3-8b 1 4 8 16; done
for r in 1 2; do steady baseline/l2kv qwen3-30b-a3b 1 8 16; steady l2kv qwen3-30b-a3b 1 8 16; done
steady baseline/l2kv gemma3-12b 1 8; steady l2kv gemma3-12b 1 8
steady baseline/l2kv llama3-8b 1 16; steady l2kv llama3-8b 1 16
for m in qwen3-30b-a3b qwen3-8b; do
  echo "== profile $m" >> $OUT/profile.log
  timeout 90 build/l2kv bench --model synthetic:$m --variants split --mode steady --steady-reps 20 --steady-batch 1 --profile >> $OUT/profile.log 2>&1
  echo "profile $m rc=$? at $SECONDS s" >> $OUT/summary.txt
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^\[  FAILED|Failure|differ|arrival" $OUT/tests.log | head -20
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-110
grep -vE "^l2kv|^    gap|^    (qkv|o|gate_up|down|lm_head|all) " $OUT/profile.log | cut -c1-100
