#!/usr/bin/env bash
# The candidate search failing early on flat top-p rows (mass bound): sampler GPU tests, then
# l2kv_bench_sampler against the sampler before (baseline/), alternated.
set -u
source build/setup_gpu.sh
cp build/run137.sh $OUT/run.sh
L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout 100 build/l2kv_tests --gtest_brief=1 --gtest_filter='*GpuSampler*:*Sampl*' > $OUT/tests.log 2>&1
echo "tests rc=$? at $SECONDS s" >> $OUT/summary.txt
for round in 1 2; do
  for b in baseline/l2kv_bench_sampler l2kv_bench_sampler; do
    echo "== $b round $round" >> $OUT/sampler.log
    timeout 120 build/$b >> $OUT/sampler.log 2>&1
    echo "$b rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^\[  (PASSED|SKIPPED|FAILED)|tests from|Failure" $OUT/tests.log | head
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
gzip $OUT/tests.log
