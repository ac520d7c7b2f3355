#!/usr/bin/env bash
# Run right after ../run.sh on the same machine: the whole GPU suite at quick sizes, then the whole
# prefill once per build (both wrote whole.log; the second, this build's, is the one kept).
source build/setup_gpu.sh; L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 330 build/l2kv_tests --gtest_brief=1 > $OUT/suite.log 2>&1; echo "suite rc=$? at $SECONDS"; grep -E "^\[  (PASSED|SKIPPED|FAILED)|tests ran" $OUT/suite.log | head -40; for b in baseline/l2kv_bench_prefill l2kv_bench_prefill; do timeout 20 build/$b --reps 5 --attention-lengths 512 --attention-prompts 1 > $OUT/whole_$(basename $(dirname $b/x)).log 2>&1; done; gzip $OUT/suite.log; ls $OUT
