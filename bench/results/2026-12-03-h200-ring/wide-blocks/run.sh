#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
log() { echo "$(date +%T) $*" >> $OUT/timeline.txt; }
log start
L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='*Gemv*:*Fused*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*' > $OUT/gpu_tests.log 2>&1; echo "rc=$?" >> $OUT/gpu_tests.log
log tests
grep -E "^\[  FAILED|rc=|PASSED" $OUT/gpu_tests.log | head -12
S="build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-context 1024 --variants split --steady-reps 50 --steady-batch 1 2"
for rep in 1 2; do
  echo "# five kernels at 1 row (default)" >> $OUT/steady.log
  timeout 60 $S 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
  echo "# nine kernels (--fused-layer-max-rows 0)" >> $OUT/steady.log
  timeout 60 $S --fused-layer-max-rows 0 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
done
log steady
timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 --steady-context 1024 --variants split --steady-reps 20 --profile > $OUT/profile.log 2>&1
log profile
E="--model synthetic:llama3-8b --mode e2e --variants split --input-len 512 --output-len 128 --concurrency 1 16 64"
for rep in 1 2; do
  for b in baseline/l2kv l2kv; do
    echo "# build/$b" >> $OUT/e2e.log
    timeout 100 build/$b bench $E 2>&1 | tr "\r" "\n" | grep -E "^e2e" >> $OUT/e2e.log
    log "e2e $b"
  done
done
cat $OUT/steady.log; grep -v "^    gap" $OUT/profile.log | tail -14; cat $OUT/e2e.log
