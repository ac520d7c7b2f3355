#!/usr/bin/env bash
# The GPU suite at quick sizes on this tree (lazy rescaling in the wgmma prefill kernel, KV blocks
# of 32 tokens by default), without the tokenizer/template oracle suites (their npm data is not on
# this machine); then the first token of 8K and 32K-token prompts at --block-size 16 and 32, and
# at 32 with 4,096 and 8,192 tokens a step (--max-num-batched-tokens).
set -u
source build/setup_gpu.sh
cp build/run04.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 450 build/l2kv_tests --gtest_brief=1 --gtest_filter='-*Oracle*:*TokenizerCorpus*' > $OUT/gpu_tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|tests from .* ran|Failure" $OUT/gpu_tests.log | head -30 >> $OUT/summary.txt
ttft() {  # label flags...
  local label=$1; shift
  (( SECONDS < 560 )) || return
  echo "== ttft $label" >> $OUT/ttft.log
  for n in 8000 32000; do
    timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len $n --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 "$@" 2>&1 | tr '\r' '\n' | grep -iE "ttft|error" >> $OUT/ttft.log
  done
  echo "ttft $label at $SECONDS s" >> $OUT/summary.txt
}
ttft block16 --block-size 16
ttft block32 --block-size 32
ttft block32-step4096 --block-size 32 --max-num-batched-tokens 4096
ttft block32-step8192 --block-size 32 --max-num-batched-tokens 8192
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
gzip $OUT/gpu_tests.log
cat $OUT/summary.txt $OUT/ttft.log
