#!/usr/bin/env bash
# (1) The fused layer's weighted x (gate_up and QKV after the first layer take round(gamma x
# residual) written by the residual epilogue before them; 1 / rms after the products): the fused
# GEMV, model and engine GPU tests; steady base (HEAD~) against it, alternated twice; a profile
# of each at batch 1. (2) Asynchronous scheduling delivering a collected step's outputs before a
# prompt step's launch: e2e off / on alternated twice, serving off / on alternated twice.
set -u
source build/setup_gpu.sh
tar -xJf build/tok.tar.xz -C build
cp build/run88.sh $OUT/run.sh
budget=580
tests() {  # name, cap, filter
  local left=$((budget - SECONDS - 5)); local cap=$2; [ $left -lt $cap ] && cap=$left
  L2KV_REQUIRE_GPU=1 L2KV_TEST_QUICK=1 timeout $cap build/l2kv_tests --gtest_filter="$3" > $OUT/$1.log 2>&1
  echo "$1 rc=$? at $SECONDS s; $(grep -cE '^\[       OK' $OUT/$1.log) ok, $(grep -cE '^\[  FAILED  \] [A-Za-z]' $OUT/$1.log) failed" >> $OUT/summary.txt
}
tests t_fused 120 'Dtypes/FusedGemv.*:Dtypes/GemvDtype.*:Fixtures/CudaModelFixture.*:CudaEngine*:CudaModel.*'
steady() {  # binary, log, model, batches...
  local bin=$1 log=$2 model=$3; shift 3
  local left=$((budget - SECONDS - 5)); [ $left -le 20 ] && { echo "$log $bin: no time" >> $OUT/summary.txt; return; }
  local cap=60; [ $left -lt $cap ] && cap=$left
  echo "== $bin $model" >> $OUT/$log
  timeout $cap build/$bin bench --model synthetic:$model --mode steady --variants split --steady-batch "$@" --steady-reps 10 >> $OUT/$log 2>&1
  echo "$log $bin $model rc=$? at $SECONDS s" >> $OUT/summary.txt
}
for r in 1 2; do for b in base_l2kv l2kv; do steady $b steady.log llama3-8b 1 2 16; done; done
for b in base_l2kv l2kv; do steady $b steady.log qwen2.5-7b 1; steady $b steady.log llama2-7b 1; done
for b in base_l2kv l2kv; do steady $b profile.log llama3-8b 1 --profile; done
for rep in 1 2; do
  for mode in no-async async; do
    [ $SECONDS -gt 420 ] && break
    echo "# $mode rep $rep" >> $OUT/e2e.log
    timeout 45 build/l2kv bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 512 --output-len 128 --concurrency 1 16 64 --$mode-scheduling >> $OUT/e2e.log 2>&1
    echo "e2e $mode rep $rep rc=$? at $SECONDS s" >> $OUT/summary.txt
  done
done
port=8011
S="--num-prompts 128 --input-len 512 --output-len 128 --max-concurrency 64 --vocab-size 128000 --no-progress"
for rep in 1 2; do
  for mode in no-async async; do
    [ $SECONDS -gt 500 ] && break
    build/l2kv serve --model synthetic:llama3-8b --tokenizer build/tok_llama3 --port $port --$mode-scheduling >> $OUT/servers.log 2>&1 &
    pid=$!
    for _ in $(seq 1 60); do curl -sf http://127.0.0.1:$port/health >/dev/null && break; sleep 1; done
    echo "# serve $mode rep $rep" >> $OUT/serving.log
    timeout 40 build/l2kv bench-serve --base-url http://127.0.0.1:$port $S >> $OUT/serving.log 2>&1
    echo "serve $mode rep $rep rc=$? at $SECONDS s" >> $OUT/summary.txt
    kill -INT $pid; wait $pid
  done
done
cat $OUT/summary.txt
grep -hE "^\[  FAILED|Failure" $OUT/t_*.log | head -20
grep -hE "^==|^steady" $OUT/steady.log | sed 's/  */ /g' | cut -c1-110
grep -E "^#| e2e " $OUT/e2e.log | sed 's/  */ /g' | cut -c1-120
grep -E "^#|Output token|Median TTFT|P99 TTFT" $OUT/serving.log
