#!/usr/bin/env bash
set -u
source build/setup_gpu.sh
T=build/l2kv_tests
log() { echo "$(date +%T) $*" >> $OUT/timeline.txt; }
log start
L2KV_REQUIRE_GPU=1 timeout 240 $T --gtest_filter='*Gemv*:*FusedGemv*' > $OUT/tests_plain.log 2>&1; echo "rc=$?" >> $OUT/tests_plain.log
log tests_plain
L2KV_GEMV_RING=1 L2KV_REQUIRE_GPU=1 timeout 240 $T --gtest_filter='*Gemv*:*FusedGemv*' > $OUT/tests_ring.log 2>&1; echo "rc=$?" >> $OUT/tests_ring.log
log tests_ring
L2KV_GEMV_RING=1 L2KV_GATE_UP_GEMV_ROWS=16 L2KV_REQUIRE_GPU=1 timeout 240 $T --gtest_filter='Fixtures/CudaModelFixture.*:CudaEngineSingle.*:Variants/CudaEngine.*' > $OUT/tests_model.log 2>&1; echo "rc=$?" >> $OUT/tests_model.log
log tests_model
for f in tests_plain tests_ring tests_model; do echo "== $f"; grep -E "^\[  FAILED|rc=|PASSED|tests ran" $OUT/$f.log | head -12; done
timeout 120 build/l2kv_bench_gemv --models llama3-8b qwen2.5-7b --rows 1 4 8 16 > $OUT/gemv_plain.log 2>&1
L2KV_GEMV_RING=1 timeout 120 build/l2kv_bench_gemv --models llama3-8b qwen2.5-7b --rows 1 4 8 16 > $OUT/gemv_ring.log 2>&1
log gemv
B="build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 4 8 16 --steady-context 1024 --variants split --steady-reps 50"
for rep in 1 2; do
  for cfg in plain ring gu16 ring_gu16 ring_gu8; do
    case $cfg in
      plain) E="";; ring) E="L2KV_GEMV_RING=1";; gu16) E="L2KV_GATE_UP_GEMV_ROWS=16";;
      ring_gu16) E="L2KV_GEMV_RING=1 L2KV_GATE_UP_GEMV_ROWS=16";; ring_gu8) E="L2KV_GEMV_RING=1 L2KV_GATE_UP_GEMV_ROWS=8";;
    esac
    echo "# $cfg ($E)" >> $OUT/steady.log
    env $E timeout 120 $B 2>&1 | grep -E "^steady|ceiling" >> $OUT/steady.log
    log "steady $cfg $rep"
  done
done
L2KV_GEMV_RING=1 L2KV_GATE_UP_GEMV_ROWS=16 timeout 120 build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 --steady-context 1024 --variants split --steady-reps 20 --profile > $OUT/profile_ring_gu16.log 2>&1
log profile
cat $OUT/steady.log
grep -E "llama3-8b .*(qkv|o|gate_up|down) .* (1|16) \|" $OUT/gemv_plain.log $OUT/gemv_ring.log
