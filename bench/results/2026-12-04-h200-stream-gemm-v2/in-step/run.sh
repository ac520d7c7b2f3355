#!/usr/bin/env bash
# The weight-streaming kernel v2 inside steps at 32/64/128 rows (L2KV_EXPERIMENT_STREAM_ROWS
# routes 17-128 rows to it) against cuBLASLt, alternating, graph-timed steady steps.
set -u
source build/setup_gpu.sh
cp build/run23.sh $OUT/run.sh
S="--model synthetic:llama3-8b --mode steady --variants split --steady-batch 32 64 128 --steady-reps 30"
for rep in 1 2; do
  for v in cublas stream; do
    echo "# $v rep $rep" >> $OUT/steady.log
    if [ $v = stream ]; then export L2KV_EXPERIMENT_STREAM_ROWS=17:128; else unset L2KV_EXPERIMENT_STREAM_ROWS; fi
    timeout 60 build/l2kv bench $S 2>&1 | grep -E "^steady" >> $OUT/steady.log
  done
done
cat $OUT/steady.log
export L2KV_EXPERIMENT_STREAM_ROWS=17:128
timeout 60 build/l2kv bench --model synthetic:llama3-8b --mode steady --variants split --steady-reps 30 --steady-batch 64 128 --profile > $OUT/profile_stream.log 2>&1
grep -E "^steady|^    (qkv|o|gate_up|down|lm_head|all) " $OUT/profile_stream.log
echo "all done at $SECONDS s"
