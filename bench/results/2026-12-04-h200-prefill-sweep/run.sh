#!/usr/bin/env bash
# GPU tests of the GEMV review fixes (d80b6dc) and the new 16,384-output fused shapes; the
# prefill benchmark (l2kv and SDPA peers, 1 and 4 prompts of 512-32K tokens); the GEMV bench.
set -u
source build/setup_gpu.sh
cp build/run14.sh $OUT/run.sh
F='Dtypes/FusedGemv.*:FusedGemvSupports.*:Dtypes/GemvDtype.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*:*Prefill*'
L2KV_REQUIRE_GPU=1 timeout 200 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -E "^\[  FAILED|rc=|PASSED|tests from .* ran" $OUT/gpu_tests.log | head -30
echo "tests done at $SECONDS s"
L2KV_SKIP_BUILD=1 timeout 240 ./scripts/bench_prefill.sh > $OUT/bench_prefill.out 2>&1; echo "bench_prefill rc=$?"
tail -5 $OUT/bench_prefill.out
tar -czf $OUT/prefill_results.tgz bench/results/*-prefill
echo "prefill done at $SECONDS s"
timeout 120 build/l2kv_bench_gemv --json $OUT/gemv.json > $OUT/gemv.log 2>&1; echo "gemv rc=$?"
tail -30 $OUT/gemv.log
echo "all done at $SECONDS s"
