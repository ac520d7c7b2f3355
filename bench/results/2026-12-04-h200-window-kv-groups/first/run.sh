#!/usr/bin/env bash
# KV cache groups for sliding-window models (68edbad): GPU tests (model, kernels, engine), then
# Gemma 3 steady steps and a 32K-token conversation with the groups on and off.
set -u
source build/setup_gpu.sh
cp build/run44.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 300 build/l2kv_tests --gtest_filter='CudaModel.*:Fixtures/CudaModelFixture.*:*ModelOps*:DecodeAttention.*:PrefillAttention.*:AllShapes/PrefillAttentionGrid.*:*Gemv*:*CudaEngine*:*CudaRunner*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|windowed KV groups|gemma3-sliding" $OUT/gpu_tests.log | head -30
B=build/l2kv
for hybrid in on off; do
  flag=""; [ $hybrid = off ] && flag="--disable-hybrid-kv-cache-manager"
  timeout 120 $B bench --model synthetic:gemma3-27b --variants split --mode steady --steady-batch 1 16 64 --steady-context 4096 $flag --json $OUT/steady_27b_$hybrid.json >> $OUT/bench.log 2>&1; echo "steady $hybrid rc=$?" >> $OUT/bench.log
  timeout 120 $B bench --model synthetic:gemma3-12b --variants split --mode e2e --input-len 31744 --output-len 1024 --concurrency 1 --max-model-len 32768 $flag --json $OUT/e2e_12b_32k_$hybrid.json >> $OUT/bench.log 2>&1; echo "e2e $hybrid rc=$?" >> $OUT/bench.log
done
grep -E "^steady|^e2e|KV blocks|rc=|KV cache of|loaded" $OUT/bench.log
