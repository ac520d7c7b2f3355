#!/usr/bin/env bash
# Right after run201.sh on the same machine: the whole prefill of 8 x 512 tokens and the first
# token of a 32K prompt, baseline/ (f4ed5a7) against this tree, alternated; then issue 17's
# steady decode steps on three models, alternated (rows above 16 add O and down into the
# residual on cuBLASLt in this tree).
set -u
source build/setup_gpu.sh
cp build/run202.sh $OUT/run.sh
for r in 1 2; do
  for b in baseline/l2kv_bench_prefill l2kv_bench_prefill; do
    echo "== $b round $r" >> $OUT/prefill.log
    timeout 30 build/$b --reps 5 --attention-lengths 512 --attention-prompts 1 >> $OUT/prefill.log 2>&1
    echo "whole $b rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
for b in baseline/l2kv l2kv; do
  echo "== ttft $b 32000" >> $OUT/prefill.log
  timeout 30 build/$b bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 32000 --output-len 1 --concurrency 1 --num-prompts 3 --max-model-len 32768 2>&1 | tr '\r' '\n' | grep -iE "ttft|e2e |error" >> $OUT/prefill.log
  echo "ttft $b at $SECONDS s" >> $OUT/summary.txt
done
for r in 1 2; do
  for model in llama3-8b qwen2.5-7b llama2-7b; do
    batches="1 16 64 128 256"
    [[ $model == llama2-7b ]] && batches="16 64"  # 128 rows of its KV do not fit beside the weights
    [[ $r == 2 ]] && batches="64 128"
    [[ $r == 2 && $model == llama2-7b ]] && batches="64"
    for b in baseline/l2kv l2kv; do
      (( SECONDS < 560 )) || break 3
      echo "== $b $model round $r" >> $OUT/steady.log
      timeout 50 build/$b bench --model synthetic:$model --mode steady --steady-batch $batches --steady-context 1024 --variants split --steady-reps 20 2>&1 | grep -E "steady|ceiling" >> $OUT/steady.log
      echo "$b $model at $SECONDS s" >> $OUT/summary.txt
    done
  done
done
cat $OUT/gpu.txt >> $OUT/summary.txt; rm $OUT/gpu.txt
cat $OUT/summary.txt
grep -iE "==|prefill:|time split|ttft|cuBLASLt" $OUT/prefill.log | head -30
grep -E "==|steady" $OUT/steady.log | head -60
