#!/usr/bin/env bash
# Weight-streaming kernel v2: its tests (every split count), the L2 promotion and W hint of its
# TMA loads; the GPU tests of last round's mixed steps and min_tokens; steady steps with a chunk.
set -u
source build/setup_gpu.sh
cp build/run22.sh $OUT/run.sh
L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='*WeightStream*:GemvSupports*' > $OUT/gpu_tests_stream.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests_stream.log
grep -hE "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests_stream.log | head -20
echo "stream tests done at $SECONDS s"
for v in 256:evict_first none:evict_first 128:evict_first 256:normal; do
  pr=${v%%:*}; h=${v##*:}
  echo "# promotion $pr, w hint $h" >> $OUT/variants.log
  L2KV_WSG_PROMOTION=$pr timeout 60 build/l2kv_bench_gemv --models llama3-8b --rows 64 128 --reps 20 --w-hint $h 2>&1 | grep -E "^llama3-8b" | cut -c1-140 >> $OUT/variants.log
done
cat $OUT/variants.log
echo "variants done at $SECONDS s"
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter='SplitDecodeRows.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 90 build/l2kv_tests --gtest_filter='*Prefill*' >> $OUT/gpu_tests.log 2>&1; echo "prefill tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests.log | head -20
echo "tests done at $SECONDS s"
timeout 150 build/l2kv bench --model synthetic:llama3-8b --mode steady --variants split --steady-batch 16 64 --steady-chunk 0 2048 --profile > $OUT/steady_chunk.log 2>&1; echo "rc=$?" >> $OUT/steady_chunk.log
grep -E "^steady|rc=|chunk" $OUT/steady_chunk.log | head -20
echo "all done at $SECONDS s"
