#!/usr/bin/env bash
# fp8 GEMV variants at 1-8 rows (L2KV_FP8_GEMV, an experiment switch of this build): tests, steady steps, profile.
set -u
source build/setup_gpu.sh
cp build/run59.sh $OUT/run.sh
B=build/l2kv
for v in 0 1 2 3 4; do
  L2KV_FP8_GEMV=$v L2KV_REQUIRE_GPU=1 timeout 60 build/l2kv_tests --gtest_filter='GemvFp8.*:CudaModel.Fp8*' > $OUT/tests-$v.log 2>&1; echo "variant $v tests rc=$?" >> $OUT/summary.log
  grep -E "^\[  FAILED|PASSED" $OUT/tests-$v.log >> $OUT/summary.log
  L2KV_FP8_GEMV=$v timeout 100 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 4 8 --steady-context 1024 >> $OUT/steady.log 2>&1; echo "variant $v rc=$?" >> $OUT/steady.log
  L2KV_FP8_GEMV=$v timeout 60 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 --steady-context 1024 --profile > $OUT/profile-$v.log 2>&1
  sed 's/.*\r//' $OUT/profile-$v.log | grep -E "^steady|gemv_fp8|qkv |o  |gate_up |down |all " | sed "s/^/v$v /" >> $OUT/summary.log
done
L2KV_FP8_GEMV=0 timeout 100 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 1 4 8 --steady-context 1024 >> $OUT/steady.log 2>&1; echo "variant 0 again rc=$?" >> $OUT/steady.log
for m in llama3-8b-fp8 llama3-8b; do
  timeout 100 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 16 --steady-context 1024 --steady-chunk 2048 --profile > $OUT/chunk-$m.log 2>&1; echo "chunk $m rc=$?" >> $OUT/chunk-$m.log
  sed 's/.*\r//' $OUT/chunk-$m.log | grep -E "^steady|profile:| us " | head -24
done
grep -aE "^steady|rc=" $OUT/steady.log | sed 's/.*\r//'
cat $OUT/summary.log
