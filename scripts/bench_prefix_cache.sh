#!/usr/bin/env bash
# Prefix caching on a GPU: offline `l2kv bench` at a 0 % hit rate (caching on against off), then
# `l2kv serve` + `l2kv bench-serve` with 256 requests sharing one 2,048-token prefix, 128-token
# questions and 128 output tokens at concurrency 64 (caching on against off). Builds nothing:
# expects build/l2kv. Usage: scripts/bench_prefix_cache.sh OUT_DIR [TOKENIZER_DIR]
# (TOKENIZER_DIR: a folder with Llama 3's tokenizer.json, so the server detokenizes; optional).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/bench_prefix_cache.sh OUT_DIR [TOKENIZER_DIR]}
tokenizer=()
[[ -n ${2:-} ]] && tokenizer=(--tokenizer "$2")
mkdir -p "$out"
E=(bench --model synthetic:llama3-8b --mode e2e --variants split --input-len 512 --output-len 128
  --concurrency 256 --num-prompts 256)
for i in 1 2; do
  echo "# caching on, run $i: l2kv ${E[*]}"
  ./build/l2kv "${E[@]}" 2>&1 | tr "\r" "\n" | grep -A2 -E "^e2e"
  echo "# caching off, run $i: l2kv ${E[*]} --no-enable-prefix-caching"
  ./build/l2kv "${E[@]}" --no-enable-prefix-caching 2>&1 | tr "\r" "\n" | grep -A2 -E "^e2e"
done | tee "$out/e2e_zero_hit.log"
S=(--num-prompts 256 --input-len 128 --shared-prefix-len 2048 --num-prefixes 1 --output-len 128
  --max-concurrency 64 --vocab-size 128000 --no-progress)
port=8011
for mode in on off; do
  flag=()
  [[ $mode == off ]] && flag=(--no-enable-prefix-caching)
  ./build/l2kv serve --model synthetic:llama3-8b "${tokenizer[@]}" --port $port "${flag[@]}" \
    >"$out/serve_$mode.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 180); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 1
  done
  {
    echo "# prefix caching $mode: l2kv bench-serve ${S[*]}"
    ./build/l2kv bench-serve --base-url "http://127.0.0.1:$port" "${S[@]}" \
      --json "$out/shared_prefix_$mode.json" 2>&1
    curl -sf "http://127.0.0.1:$port/metrics" | grep -E "prefix_cache|kv_blocks"
  } | tee "$out/shared_prefix_$mode.log"
  kill -INT $pid
  wait $pid || true
done
