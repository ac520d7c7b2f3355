#!/usr/bin/env bash
# The GPU suite at quick sizes on the session's final tree (the sampler's candidate set and review
# fixes, uniform_for's 23 bits, the pitched table upload), without the tokenizer/template oracle
# suites whose npm data is not on this machine.
set -u
source build/setup_gpu.sh
cp build/run140.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 420 build/l2kv_tests --gtest_brief=1 --gtest_filter='-*Oracle*:*TokenizerCorpus*' > $OUT/gpu_tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/gpu.txt
cat $OUT/gpu.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|tests from|Failure" $OUT/gpu_tests.log | head -40
gzip $OUT/gpu_tests.log
