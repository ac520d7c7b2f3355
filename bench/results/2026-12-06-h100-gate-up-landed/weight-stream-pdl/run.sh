#!/usr/bin/env bash
# The command of this run, as given (one line in the original).
source build/setup_gpu.sh; for i in 1 2 3; do L2KV_REQUIRE_GPU=1 timeout 100 build/l2kv_tests --gtest_filter='*WeightStream*' > $OUT/ws$i.log 2>&1; echo "rc=$?"; grep -E "^\[  FAILED|^\[  PASSED" $OUT/ws$i.log | head -5; done; grep -B2 -A8 "Failure" $OUT/ws1.log | head -40
