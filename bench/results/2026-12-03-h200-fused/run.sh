#!/usr/bin/env bash
set -u
mkdir -p /work; ln -sfn "$PWD" /work/main
tar -xJf build/gpu_bundle.tar.xz -C build; export LD_LIBRARY_PATH=$PWD/build/lib
export L2KV_REQUIRE_GPU=1
build/l2kv_tests --gtest_filter='*FusedGemv*:*ModelOps*:*Gemv*:*CudaModel*:*CudaRunner*:*CudaEngine*:*Pdl*:*Fp8*:*WeightStream*' > $OUT/tests.log 2>&1
echo "tests rc=$?" >> $OUT/tests.log; grep -E "FAILED|rc=|fused-layer" $OUT/tests.log | head -20
B="bench --model synthetic:llama3-8b --mode steady --steady-batch 1 4 8 16 64 128 --steady-context 1024 --variants split --steady-reps 50"
{ for i in 1 2; do echo "# fused $i"; build/l2kv $B 2>&1 | grep steady; echo "# nine-kernel $i"; build/l2kv $B --no-fused-layer 2>&1 | grep steady; echo "# base $i"; build/baseline/l2kv $B 2>&1 | grep steady; done; } > $OUT/steady.log
cat $OUT/steady.log
build/l2kv bench --model synthetic:llama3-8b --mode steady --steady-batch 1 16 --steady-context 1024 --variants split --steady-reps 20 --profile > $OUT/profile.log 2>&1
grep -v "^    gap" $OUT/profile.log | head -50
L2KV_TEST_QUICK=1 timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 build/l2kv_tests --gtest_filter='*FusedGemv*:*ModelOps*' > $OUT/memcheck.log 2>&1; echo "memcheck rc=$?" >> $OUT/memcheck.log; tail -3 $OUT/memcheck.log
L2KV_TEST_QUICK=1 timeout 150 compute-sanitizer --tool racecheck --error-exitcode 9 build/l2kv_tests --gtest_filter='*FusedGemv*Residual*:*FusedGemv*Silu*' > $OUT/racecheck.log 2>&1; echo "racecheck rc=$?" >> $OUT/racecheck.log; tail -3 $OUT/racecheck.log
