#!/usr/bin/env bash
# What constrained decoding costs on a GPU: `l2kv serve` (synthetic llama3-8b with a real
# tokenizer, which grammars need) and `l2kv bench-serve` at concurrency 64, 256 requests of
# 128 prompt and 128 output tokens: unconstrained, a regex that never has to end ([a-z ]*, so
# every answer runs to max_tokens as the unconstrained ones do: the fair comparison), a JSON
# schema (one string field) and json_object (whose random-weight answers close early, so more
# prompts are admitted and prefill mixes into more steps), three times in alternation. All runs
# send --no-ignore-eos (structured outputs refuse ignore_eos). Compare TPOT (the decode step as
# a client sees it). Builds nothing: expects build/l2kv.
# Usage: scripts/bench_structured.sh OUT_DIR TOKENIZER_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/bench_structured.sh OUT_DIR TOKENIZER_DIR}
tokenizer=${2:?usage: scripts/bench_structured.sh OUT_DIR TOKENIZER_DIR}
mkdir -p "$out"
port=8012
./build/l2kv serve --model synthetic:llama3-8b --tokenizer "$tokenizer" --port $port \
  >"$out/serve.log" 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
  sleep 1
done
S=(--base-url "http://127.0.0.1:$port" --endpoint /v1/chat/completions --num-prompts 256
  --input-len 128 --output-len 128 --max-concurrency 64 --no-ignore-eos --no-progress)
schema='{"response_format": {"type": "json_schema", "json_schema": {"name": "note", "strict": true,
  "schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"],
  "additionalProperties": false}}}}'
object='{"response_format": {"type": "json_object"}}'
regex='{"structured_outputs": {"regex": "[a-z ]*"}}'
for run in 1 2 3; do
  for mode in none regex schema object; do
    extra=()
    [[ $mode == regex ]] && extra=(--extra-body "$regex")
    [[ $mode == schema ]] && extra=(--extra-body "$schema")
    [[ $mode == object ]] && extra=(--extra-body "$object")
    echo "# $mode, run $run: l2kv bench-serve ${S[*]} ${extra[*]}"
    ./build/l2kv bench-serve "${S[@]}" "${extra[@]}" --json "$out/${mode}_$run.json" 2>&1
  done
done | tee "$out/structured.log"
