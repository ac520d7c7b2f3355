#!/usr/bin/env bash
# The wgmma prefill kernel's work-item order: items sorted by their end in buckets of 1,024 keys
# (this tree) against buckets of 256 and 4,096 keys and one bucket for all (each sequence and KV
# head's items together): the attention sweep at 2K / 8K / 32K tokens, one and four prompts,
# KV blocks of 32 tokens, alternated twice.
set -u
tar -xJf build/bench_bundle.tar.xz -C build
export LD_LIBRARY_PATH=$PWD/build/lib
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv > $OUT/summary.txt 2>&1
cp build/run05.sh $OUT/run.sh
for r in 1 2; do
  for v in head bucket256 bucket4096 bucket131072; do
    bin=build/l2kv_bench_prefill; [[ $v != head ]] && bin=build/variant_$v/l2kv_bench_prefill
    echo "== $v" >> $OUT/sweep.log
    timeout 45 $bin --batch 1 --prompt 64 --reps 1 --attention-lengths 2048 8192 32768 --attention-prompts 1 4 --attention-block-size 32 >> $OUT/sweep.log 2>&1
    echo "sweep $v rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
cat $OUT/summary.txt
grep -E "^==|wgmma" $OUT/sweep.log | sed 's/prefill attention, //; s/warp MMA.*max diff/max diff/; s/, 32:8 heads, block 32//'
