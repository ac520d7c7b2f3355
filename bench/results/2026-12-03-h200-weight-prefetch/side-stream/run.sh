#!/usr/bin/env bash
# The side-stream weight prefetch experiment (a build of this day's working tree, not kept: a
# prefetch kernel per projection on a second stream, forked from and joined to the step's
# stream). GPU tests of it, steady steps with prefetch off and on, a profile at batch 1 and 64.
set -u
source build/setup_gpu.sh
F='*WeightPrefetch*:CudaModel*:*DecodeKernelsAgree*:*CudaRunner*:*Fixture*:*Gemv*:*ModelOps*'
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter="$F" > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
B="bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 64 128 256 --steady-context 1024 --variants split --steady-reps 50"
{ echo "# $(sed -n 2p $OUT/gpu.txt), $(date -u +%F). l2kv $B --weight-prefetch P"
  for p in off 8 16 32 16+evict_last 32+evict_last off; do
    echo "# weight-prefetch $p"; timeout 45 build/l2kv $B --weight-prefetch $p --json $OUT/steady_$p.json 2>&1 | grep -E "steady|ceiling"
  done
} > $OUT/steady.log
{ for p in off 32+evict_last; do echo "# weight-prefetch $p"; timeout 40 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 64 --steady-context 1024 --variants split --steady-reps 20 --profile --weight-prefetch $p 2>&1 | grep -vE "^l2kv:"; done; } > $OUT/profile.log
