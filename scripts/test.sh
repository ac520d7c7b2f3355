#!/usr/bin/env bash
# Builds l2kv with warnings as errors and runs every test. On a machine without a CUDA GPU the
# GPU tests report themselves skipped and every CPU test still runs. The server tests run
# `l2kv serve` on the CPU backend over 127.0.0.1 (scripts/server_test.sh); the structured-output
# schema suite's outputs are validated by ajv (scripts/schema_suite_test.sh). Then the same CPU and
# server tests again under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/,
# scripts/test_sanitizers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh -DL2KV_WERROR=ON
./scripts/check_format.sh
./scripts/tokenizer_test_data.sh
./build/l2kv_tests --gtest_brief=1
./scripts/schema_suite_test.sh
./scripts/server_test.sh
./scripts/test_sanitizers.sh
# Every libFuzzer target (fuzz/) for 12 s over its corpus: a crash, hang or sanitizer report fails.
# (Longer rounds run by hand: scripts/fuzz.sh TARGET SECONDS; CI stays under 45 minutes.)
./scripts/fuzz.sh all 12
