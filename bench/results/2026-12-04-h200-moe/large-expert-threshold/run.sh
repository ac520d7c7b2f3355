#!/usr/bin/env bash
# Mixtral-8x7B at 8-32 rows: the expert GEMV up to 4 slots per expert (this build) against up to
# 2 (prev/: 16-32 rows then take the host path, cuBLASLt per expert).
set -u
source build/setup_gpu.sh
cp build/run32.sh $OUT/run.sh
for rep in 1 2; do
  for b in prev this; do
    bin=build/l2kv; [ $b = prev ] && bin=build/prev/l2kv
    echo "# $b rep $rep" >> $OUT/steady.log
    timeout 60 $bin bench --model synthetic:mixtral-8x7b --mode steady --variants split --steady-batch 8 16 24 32 --steady-reps 10 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
done
cat $OUT/steady.log
echo "all done at $SECONDS s"
