#!/usr/bin/env bash
# Asynchronous scheduling: its GPU test first; then end to end (llama3-8b, 512 -> 128 tokens at
# concurrency 1 / 16 / 64) and serving (bench-serve, 128 requests at concurrency 64, Llama 3.1's
# tokenizer) with it off and on, alternated; then the GPU tests whose checks were fixed before
# their first run (6eab60f, 2b3437e) as time allows.
set -u
source build/setup_gpu.sh
tar -xJf build/tok.tar.xz -C build
cp build/run82.sh $OUT/run.sh
budget=${RUN_BUDGET:-560}
run_group() {  # name, cap seconds, filter
  local left=$((budget - SECONDS - 5))
  local cap=$2; [ $left -lt $cap ] && cap=$left
  [ $cap -le 10 ] && { echo "$1: no time left" >> $OUT/summary.txt; return; }
  L2KV_REQUIRE_GPU=1 timeout $cap build/l2kv_tests --gtest_filter="$3" > $OUT/$1.log 2>&1
  local rc=$?
  echo "$1: rc=$rc at $SECONDS s; $(grep -cE '^\[       OK' $OUT/$1.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/$1.log) failed lines" >> $OUT/summary.txt
}
run_group async_test 90 'CudaEngineSingle.Asynchronous*'
for rep in 1 2; do
  for mode in no-async async; do
    echo "# $mode rep $rep" >> $OUT/e2e.log
    timeout 70 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 512 --output-len 128 --concurrency 1 16 64 --$mode-scheduling >> $OUT/e2e.log 2>&1
    echo "e2e $mode rep $rep rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
port=8011
S="--num-prompts 128 --input-len 512 --output-len 128 --max-concurrency 64 --vocab-size 128000 --no-progress"
for mode in no-async async; do
  [ $SECONDS -gt 380 ] && break
  build/l2kv serve --model synthetic:llama3-8b --tokenizer build/tok_llama3 --port $port --$mode-scheduling > $OUT/serve_$mode.log 2>&1 &
  pid=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 1; done
  echo "# $mode" >> $OUT/serving.log
  timeout 60 build/l2kv bench-serve --base-url http://127.0.0.1:$port $S >> $OUT/serving.log 2>&1
  echo "serve $mode rc=$? at $SECONDS s" >> $OUT/summary.txt
  kill -INT $pid; wait $pid
done
run_group model_engine 120 'CudaModel.*:Fixtures/CudaModelFixture.*:Variants/CudaEngine.*:CudaEngineSingle.*'
run_group changed_tests 70 'DecodeAttention.SplitSliding*:Dtypes/ModelOps.AddRmsNormOfANormalized*:*CudaPromptLogprobs*:PagedV1Long.EngineBound*:*CudaModel*Replay*'
run_group expert_tests 60 '*ExpertGemv*'
cat $OUT/summary.txt
for f in async_test model_engine changed_tests expert_tests; do echo "== $f"; grep -hE "^\[  FAILED|Failure|Which is|Expected|async scheduling" $OUT/$f.log 2>/dev/null | head -12; done
grep -E "^#|tok/s|TPOT|per step" $OUT/e2e.log | head -40
grep -E "^#|throughput|TTFT|TPOT" $OUT/serving.log | head -20
