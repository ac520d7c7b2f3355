#!/usr/bin/env bash
# The structured-output schema suite: l2kv_tests' SchemaSuite generates one output per schema of
# tests/structured/schemas.json on a CPU fixture with random weights (the grammar alone keeps
# them valid), then ajv (tests/structured/validator, pinned; npm ci when missing) validates each
# output against its schema, independently of l2kv. Builds nothing: expects build/l2kv_tests.
# Run by scripts/test.sh after the gtest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
tests=${L2KV_TESTS_BIN:-build/l2kv_tests}
command -v node >/dev/null && command -v npm >/dev/null || {
  echo "l2kv: node and npm are needed for the schema suite" >&2
  exit 1
}
validator=tests/structured/validator
if [[ ! -f $validator/node_modules/ajv/package.json ]] ||
  ! cmp -s "$validator/package-lock.json" "$validator/node_modules/.l2kv-lock"; then
  echo "l2kv: installing the schema validator (npm ci)"
  npm ci --prefix "$validator" --no-audit --no-fund --loglevel=error
  cp "$validator/package-lock.json" "$validator/node_modules/.l2kv-lock"
fi
out=build/schema_suite/outputs.jsonl
rm -f "$out"
L2KV_SCHEMA_SUITE_OUT=$out "$tests" --gtest_filter='SchemaSuite.*' --gtest_brief=1
node "$validator/validate.mjs" tests/structured/schemas.json "$out"
