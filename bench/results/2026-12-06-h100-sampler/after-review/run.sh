#!/usr/bin/env bash
# After the review: NaN logits as -inf, the kept-set search recorded for tests, the race reach
# pinned; GPU sampler and engine tests, sanitizers on the new tests, l2kv_bench_sampler against
# the sampler before (baseline/), alternated.
set -u
source build/setup_gpu.sh
cp build/run139.sh $OUT/run.sh
export L2KV_REQUIRE_GPU=1
L2KV_TEST_QUICK=1 timeout 200 build/l2kv_tests --gtest_brief=1 --gtest_filter='*GpuSampler*:*Sampl*:Variants/CudaEngine*:CudaEngineSingle*:*CudaRunner*:*CudaPromptLogprobs*:*StepProfile*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
for tool in memcheck racecheck synccheck; do
  timeout 100 /usr/local/cuda/bin/compute-sanitizer --tool $tool --error-exitcode 9 build/l2kv_tests --gtest_brief=1 --gtest_filter='GpuSamplerGpuTest.PeakedLogits*:GpuSamplerGpuTest.CandidateSetEdges*' > $OUT/san_$tool.log 2>&1
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
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|tests from|Failure|Expected|Which is|row " $OUT/tests.log | head -30
grep -hE "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" $OUT/san_*.log
python3 - <<'PY'
import re,os
rows={}
cur=None
for line in open(os.environ['OUT']+'/sampler.log'):
    if line.startswith('=='): cur='base' if 'baseline' in line else 'new'; continue
    m=re.match(r'(\w+)\s+(.+?)\s+rows (\d+)\s+([\d.]+) us',line)
    if m: rows.setdefault((m.group(1),m.group(2),m.group(3)),{}).setdefault(cur,[]).append(m.group(4))
for k,v in rows.items(): print(f"{k[0]:7s} {k[1]:24s} rows {k[2]:3s} base {'/'.join(v.get('base',[]))}  new {'/'.join(v.get('new',[]))}")
PY
cat $OUT/san_*.log > $OUT/sanitizers.log; rm $OUT/san_*.log; gzip $OUT/tests.log $OUT/sanitizers.log
