#!/usr/bin/env bash
# l2kv_bench_sampler: the sampler of this tree against the one before it (baseline/), alternated.
set -u
source build/setup_gpu.sh
cp build/run134.sh $OUT/run.sh
for round in 1 2; do
  for b in baseline/l2kv_bench_sampler l2kv_bench_sampler; do
    echo "== $b round $round" >> $OUT/sampler.log
    timeout 120 build/$b --json $OUT/sampler_$(dirname $b | tr / _)_$round.json >> $OUT/sampler.log 2>&1
    echo "$b rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
cat $OUT/gpu.txt $OUT/summary.txt
cat $OUT/sampler.log
