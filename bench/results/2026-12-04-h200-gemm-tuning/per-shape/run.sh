#!/usr/bin/env bash
# GPU tests of the last refactors; cuBLASLt's algorithm choice: heuristic (32 suggestions timed)
# against wide (each algorithm id's suggestions with split-K / cluster variants), per shape cold.
set -u
source build/setup_gpu.sh
cp build/run34.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 240 build/l2kv_tests --gtest_filter='CudaModel.*:*ModelOps*:Variants/CudaEngine.*:CudaEngineSingle.*:*Gemv*:*WeightStream*:Fixtures/CudaModelFixture.*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests.log | head -20
for t in heuristic wide; do
  /usr/bin/time -f "%e s wall" timeout 150 build/l2kv_bench_gemv --models llama3-8b qwen2.5-7b --rows 16 32 64 128 --gemm-tuning $t --reps 30 --json $OUT/gemv_$t.json > $OUT/gemv_$t.log 2>&1
  echo "rc=$?" >> $OUT/gemv_$t.log
done
for t in heuristic wide; do echo "== $t"; grep -E "^(llama3|qwen2)" $OUT/gemv_$t.log | awk '{print $1,$2,$5,$7,$8}'; grep -E "step|wall|rc=" $OUT/gemv_$t.log | tail -12; done
echo "all done at $SECONDS s"
