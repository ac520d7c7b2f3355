#!/usr/bin/env bash
# End to end: l2kv bench (512-token prompts, 128 out) at concurrency 1, 16, 64 and 128; l2kv serve
# + bench-serve at concurrency 64 against the offline engine's same workload.
set -u
source build/setup_gpu.sh
cp build/run115.sh $OUT/run.sh
e2e() {
  echo "== e2e $*" >> $OUT/e2e.log
  timeout 200 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 512 --output-len 128 "$@" >> $OUT/e2e.log 2>&1
  echo "e2e $* rc=$? at $SECONDS s" >> $OUT/summary.txt
}
e2e --concurrency 1 16
e2e --concurrency 64 128 --num-prompts 128
build/l2kv serve --model synthetic:llama3-8b --port 8013 > $OUT/serve.log 2>&1 &
spid=$!
for i in $(seq 1 90); do curl -sf http://127.0.0.1:8013/health > /dev/null && break; sleep 1; done
timeout 200 build/l2kv bench-serve --base-url http://127.0.0.1:8013 --num-prompts 128 --input-len 512 --output-len 128 --max-concurrency 64 --vocab-size 128000 > $OUT/bench_serve.log 2>&1
echo "bench-serve rc=$? at $SECONDS s" >> $OUT/summary.txt
kill $spid; wait $spid
e2e --concurrency 64 --num-prompts 128
cat $OUT/gpu.txt $OUT/summary.txt
grep -hE "^==|^e2e|tok/s" $OUT/e2e.log | sed 's/  */ /g' | cut -c1-140
grep -iE "throughput|ttft|tpot" $OUT/bench_serve.log | head -12
