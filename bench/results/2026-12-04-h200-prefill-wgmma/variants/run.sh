#!/usr/bin/env bash
# wgmma prefill kernel variants in one run: lockstep (every thread copies, two block barriers per
# tile), ws (a copying warpgroup, mbarrier rings), pingpong (ws with the consumers' GEMM issue
# alternated by named barriers).
set -u
source build/setup_gpu.sh
cp build/run19.sh $OUT/run.sh
for v in pingpong ws; do
  L2KV_PREFILL_VARIANT=$v L2KV_REQUIRE_GPU=1 timeout 150 build/l2kv_tests --gtest_filter='*Prefill*:Fixtures/CudaModelFixture.*' > $OUT/gpu_tests_$v.log 2>&1; echo "tests $v rc=$?" | tee -a $OUT/gpu_tests_$v.log
  grep -E "^\[  FAILED|PASSED" $OUT/gpu_tests_$v.log | head -5
done
echo "tests done at $SECONDS s"
A="--batch 1 --prompt 512 --reps 2 --attention-prompts 1 4 --attention-lengths 1024 4096 8192 32768"
for rep in 1 2; do
  for v in lockstep ws pingpong; do
    echo "### $v" >> $OUT/variants.log
    L2KV_PREFILL_VARIANT=$v timeout 60 build/l2kv_bench_prefill $A 2>&1 | grep "prefill attention" >> $OUT/variants.log
  done
done
cat $OUT/variants.log | sed -e 's/prefill attention, //' -e 's/, 32:8 heads//' -e 's/; max diff.*//'
echo "all done at $SECONDS s"
