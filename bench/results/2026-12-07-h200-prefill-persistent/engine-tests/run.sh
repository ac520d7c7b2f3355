#!/usr/bin/env bash
# The engine, runner, prefix-caching, Gemma 3 and chunked/mixed-step GPU tests on the persistent
# prefill kernel (same machine, right after ../run.sh).
source build/setup_gpu.sh >/dev/null 2>&1; L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 150 build/l2kv_tests --gtest_brief=1 --gtest_filter='Variants/CudaEngine*:*CudaRunner*:*PrefixCach*:*Gemma*:*Mixed*:*Chunk*' > $OUT/engine_tests.log 2>&1; echo "rc=$?"; grep -E "^\[  (PASSED|SKIPPED|FAILED)|Failure|tests ran" $OUT/engine_tests.log | head -20; gzip $OUT/engine_tests.log
