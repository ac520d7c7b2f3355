#!/usr/bin/env bash
# The sampler with per-warp atomic bins, the radix fallback reusing the row's mass and the race in
# float first: GPU sampler tests and sanitizers; l2kv_bench_sampler against the sampler before
# (baseline/), alternated; end to end at concurrency 64 and 1 (llama3-8b).
set -u
source build/setup_gpu.sh
cp build/run135.sh $OUT/run.sh
export L2KV_REQUIRE_GPU=1
L2KV_TEST_QUICK=1 timeout 200 build/l2kv_tests --gtest_brief=1 --gtest_filter='*GpuSampler*:Variants/CudaEngine*:*CudaRunner*:*StepProfile*:*Sampl*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
for tool in memcheck racecheck synccheck; do
  timeout 100 /usr/local/cuda/bin/compute-sanitizer --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_brief=1 --gtest_filter='GpuSamplerGpuTest.PeakedLogits*:GpuSamplerGpuTest.PromptLogprobs*' > $OUT/san_$tool.log 2>&1
  echo "$tool rc=$? at $SECONDS s" >> $OUT/summary.txt
done
unset L2KV_REQUIRE_GPU
for round in 1 2; do
  for b in baseline/l2kv_bench_sampler l2kv_bench_sampler; do
    echo "== $b round $round" >> $OUT/sampler.log
    timeout 120 build/$b >> $OUT/sampler.log 2>&1
    echo "$b rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
e2e() {  # binary, label, concurrency, args...
  local bin=$1 label=$2 conc=$3; shift 3
  echo "== $label conc $conc $*" >> $OUT/e2e.log
  timeout 100 $bin bench --model synthetic:llama3-8b --variants split --mode e2e --input-len 512 --output-len 128 --concurrency $conc "$@" > $OUT/one.log 2>&1
  grep -E "tok/s|per step" $OUT/one.log >> $OUT/e2e.log
}
for conc in 64 1; do
  for b in baseline/l2kv l2kv; do
    e2e build/$b "$b greedy" $conc
    e2e build/$b "$b qwen" $conc --temperature 0.7 --top-p 0.8 --top-k 20 --repetition-penalty 1.05
    e2e build/$b "$b temp1" $conc --temperature 1
  done
done
echo "e2e done at $SECONDS s" >> $OUT/summary.txt
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|tests from|Failure|vocab" $OUT/tests.log | head -30
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/san_*.log
grep -E "^==|rows" $OUT/sampler.log
grep -E "^==|per step" $OUT/e2e.log | sed 's/, execute.*//'
cat $OUT/san_*.log > $OUT/sanitizers.log; rm $OUT/san_*.log; gzip $OUT/tests.log $OUT/sanitizers.log
rm -f $OUT/one.log
