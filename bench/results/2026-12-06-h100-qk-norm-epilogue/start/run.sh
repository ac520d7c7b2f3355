#!/usr/bin/env bash
# Steady decode on the tree of b4ba88f: llama3-8b / qwen2.5-7b / llama2-7b at 1-256 rows (issue 17's
# bars on this card), Qwen3-30B-A3B at 1-64 rows and one profiled batch-1 step (issue 19's MoE
# bar), then the opt-in WeightStreamGemm PDL test in ten processes with its diagnosis.
set -u
source build/setup_gpu.sh
cp build/run122.sh $OUT/run.sh
steady() {  # model batches...
  local m=$1; shift
  echo "== $m $*" >> $OUT/steady.log
  timeout 90 build/l2kv bench --model synthetic:$m --variants split --mode steady --steady-reps 20 --steady-batch "$@" >> $OUT/steady.log 2>&1
  echo "steady $m $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do steady llama3-8b 1 16 64 128 256; done
steady qwen2.5-7b 1 16 64 128 256
steady llama2-7b 1 16 64
for r in 1 2; do steady qwen3-30b-a3b 1 8 16 64; done
timeout 90 build/l2kv bench --model synthetic:qwen3-30b-a3b --variants split --mode steady --steady-reps 20 --steady-batch 1 --profile > $OUT/moe_profile.log 2>&1
echo "moe profile rc=$? at $SECONDS s" >> $OUT/summary.txt
mkdir -p $OUT/logs
for i in $(seq 1 8); do
  L2KV_REQUIRE_GPU=1 timeout 60 build/l2kv_tests --gtest_filter='*WeightStreamDtype.Programmatic*' > $OUT/logs/pdl_only_$i.log 2>&1
  echo "pdl-only $i rc=$? at $SECONDS s" >> $OUT/summary.txt
done
tar -C $OUT -czf $OUT/logs.tar.gz logs && rm -rf $OUT/logs
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-120
grep -vE "^l2kv|^    gap" $OUT/moe_profile.log | cut -c1-110 | head -40
tar -xzOf $OUT/logs.tar.gz | grep -E "differ|NaN|changed|FAILED|PASSED" | cut -c1-300 | sort | uniq -c | head -20
