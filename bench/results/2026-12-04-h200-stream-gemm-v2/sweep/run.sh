#!/usr/bin/env bash
# Weight-streaming kernel v2 (k split in a cluster, DSMEM sums): its tests, then the projection
# sweep against cuBLASLt at 16-128 rows (llama3-8b, qwen2.5-7b), then forced split counts.
set -u
source build/setup_gpu.sh
cp build/run21.sh $OUT/run.sh
L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 120 build/l2kv_tests --gtest_filter='WeightStream*:GemvSupports*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|Failure" $OUT/gpu_tests.log | head -20
echo "tests done at $SECONDS s"
timeout 200 build/l2kv_bench_gemv --models llama3-8b qwen2.5-7b --rows 16 32 64 128 --reps 30 --json $OUT/gemv.json > $OUT/gemv.log 2>&1; echo "rc=$?" >> $OUT/gemv.log
grep -E "rows |^llama3-8b|^qwen" $OUT/gemv.log | cut -c1-140
echo "bench done at $SECONDS s"
for s in 1 2 4 8; do
  echo "# splits $s" >> $OUT/splits.log
  timeout 60 build/l2kv_bench_gemv --models llama3-8b --rows 64 128 --reps 20 --splits $s 2>&1 | grep -E "^llama3-8b" | cut -c1-140 >> $OUT/splits.log
done
cat $OUT/splits.log
echo "all done at $SECONDS s"
