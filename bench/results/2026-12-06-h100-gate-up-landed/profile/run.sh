#!/usr/bin/env bash
# One profiled steady step (--profile) at 8, 16, 64 and 256 rows, synthetic llama3-8b, context 1024.
set -u
source build/setup_gpu.sh
cp build/run118.sh $OUT/run.sh
for b in 8 16 64 256; do
  echo "== --steady-batch $b --profile" >> $OUT/profile.log
  timeout 90 build/l2kv bench --model synthetic:llama3-8b --variants split --mode steady --steady-reps 20 --steady-batch $b --profile >> $OUT/profile.log 2>&1
  echo "profile $b rc=$? at $SECONDS s" >> $OUT/summary.txt
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -vE "^l2kv|^    gap" $OUT/profile.log | cut -c1-110
