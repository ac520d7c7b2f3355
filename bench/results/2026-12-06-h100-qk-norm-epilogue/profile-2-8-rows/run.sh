#!/usr/bin/env bash
# Where the q/k-norm epilogue loses at 2-8 rows of Qwen3-8B's fused layer: one profiled step of
# baseline/ (b4ba88f: QKV store + rope_and_cache) and of this tree at 1, 2, 4, 8 and 16 rows.
set -u
source build/setup_gpu.sh
cp build/run125.sh $OUT/run.sh
for b in baseline/l2kv l2kv; do
  for n in 1 2 4 8 16; do
    echo "== $b qwen3-8b $n" >> $OUT/profile.log
    timeout 60 build/$b bench --model synthetic:qwen3-8b --variants split --mode steady --steady-reps 20 --steady-batch $n --profile >> $OUT/profile.log 2>&1
    echo "profile $b $n rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
cat $OUT/gpu.txt $OUT/summary.txt
grep -E "^==|_kernel|nvjet|profile:|^    (qkv|o|gate_up|down) " $OUT/profile.log | cut -c1-100
