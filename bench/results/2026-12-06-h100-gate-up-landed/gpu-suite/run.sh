#!/usr/bin/env bash
# The whole GPU test suite at quick sizes on the tree with gate_up on the GEMV up to 10 rows
# (tests that need two GPUs skip; the tokenizer oracle tests need npm data not on this machine).
set -u
source build/setup_gpu.sh
cp build/run120.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 540 build/l2kv_tests --gtest_brief=1 > $OUT/gpu_tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/gpu.txt
cat $OUT/gpu.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|tests from" $OUT/gpu_tests.log | head -40
