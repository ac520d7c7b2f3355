#!/usr/bin/env bash
# add_rmsnorm and gated_mul_fp8 with a cluster of blocks per row: tests, sanitizers, steady steps and e2e against one block per row (L2KV_EXP_ONE_PART).
set -u
source build/setup_gpu.sh
cp build/run67.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 timeout 300 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:Fp8FusedOpsErrors.*:Fp8GemmSwitches.*:Fp8Activations.*:GemvFp8.*:CudaModel.*:*ModelOps*:CudaEngineSingle.*:Fixtures/*:*FusedGemv*:*Moe*:*Gemma*' > $OUT/gpu_tests.log 2>&1; echo "tests rc=$?" >> $OUT/gpu_tests.log
grep -hE "^\[  FAILED|rc=|PASSED|Failure" $OUT/gpu_tests.log | head -20
CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck synccheck; do
  L2KV_TEST_QUICK=1 L2KV_REQUIRE_GPU=1 timeout 120 $CS --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_filter='*Fp8FusedOps*:*ModelOps*RmsNorm*' >> $OUT/sanitizer.log 2>&1; echo "$tool rc=$?" >> $OUT/sanitizer.log
done
grep -E "rc=|ERROR SUMMARY|RACECHECK SUMMARY" $OUT/sanitizer.log
B=build/exp_l2kv
for v in new old new old; do
  E=""; [ $v = old ] && E="L2KV_EXP_ONE_PART=1"
  for m in llama3-8b-fp8 llama3-8b; do
    echo "== $v $m" >> $OUT/bench.log
    env $E timeout 100 $B bench --model synthetic:$m --variants split --mode steady --steady-batch 1 16 64 --steady-context 1024 >> $OUT/bench.log 2>&1; echo "$v $m rc=$?" >> $OUT/bench.log
  done
done
for v in new old; do
  E=""; [ $v = old ] && E="L2KV_EXP_ONE_PART=1"
  for m in llama3-8b-fp8 llama3-8b; do
    echo "== e2e $v $m" >> $OUT/bench.log
    env $E timeout 100 $B bench --model synthetic:$m --variants split --mode e2e --input-len 512 --output-len 256 --concurrency 64 >> $OUT/bench.log 2>&1; echo "e2e $v $m rc=$?" >> $OUT/bench.log
  done
done
grep -aE "^== |^steady|e2e  |rc=[1-9]|rror" $OUT/bench.log | sed 's/.*\r//'
for v in new old; do
  E=""; [ $v = old ] && E="L2KV_EXP_ONE_PART=1"
  echo "== $v" >> $OUT/profile.log
  env $E timeout 60 $B bench --model synthetic:llama3-8b-fp8 --variants split --mode steady --steady-batch 64 --steady-context 1024 --profile >> $OUT/profile.log 2>&1
done
sed 's/.*\r//' $OUT/profile.log | grep -E "^== |^steady|_kernel |all " | head -40
