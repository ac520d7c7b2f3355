#!/usr/bin/env bash
# Builds l2kv and its tests with AddressSanitizer + UndefinedBehaviorSanitizer (g++, the
# L2KV_SANITIZE CMake option) into build-asan/ and runs every CPU test there (GPU tests skip
# themselves without a GPU), then the server tests against the sanitized `l2kv serve`. Any
# report (memory error, leak, undefined behaviour) fails the run. CUDA .cu files are not
# instrumented (see CMakeLists.txt). Run by scripts/test.sh (CI) after the normal tests.
# Usage: scripts/test_sanitizers.sh [--no-server] [extra gtest arguments]
# Reports: build-asan/sanitizer_reports/<step>.<pid>, printed on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
server=1
if [[ ${1:-} == --no-server ]]; then
  server=0
  shift
fi
./scripts/install_deps.sh
# RelWithDebInfo: -O2 keeps the CPU model tests fast, -g gives the reports file:line.
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DL2KV_SANITIZE=address,undefined -DL2KV_WERROR=ON >/dev/null
ninja -C build-asan l2kv_tests l2kv
# The oracle outputs go to build/tokenizer_oracle; the tests look in their own build folder.
./scripts/tokenizer_test_data.sh
ln -sfn ../build/tokenizer_oracle build-asan/tokenizer_oracle

reports=build-asan/sanitizer_reports
rm -rf "$reports"
mkdir -p "$reports"
supp=$PWD/tests/sanitizers
# log_path: every report lands in a file, so one printed by a server process whose exit status
# nobody checks (or printed at exit, after the tests passed) still fails the run.
sanitizer_env() {
  local step=$1
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$PWD/$reports/$step"
  export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:suppressions=$supp/ubsan.supp:log_path=$PWD/$reports/$step"
}
check_reports() {
  local step=$1 status=$2
  if compgen -G "$reports/$step.*" >/dev/null; then
    echo "l2kv: sanitizer reports from $step:" >&2
    cat "$reports/$step".* >&2
    exit 1
  fi
  if ((status != 0)); then
    echo "l2kv: $step failed under the sanitizers (exit $status)" >&2
    exit "$status"
  fi
}

status=0
(sanitizer_env gtest && exec ./build-asan/l2kv_tests --gtest_brief=1 "$@") || status=$?
check_reports gtest "$status"

if ((server)); then
  status=0
  (sanitizer_env server && L2KV_BIN=build-asan/l2kv L2KV_SERVER_LOG_DIR=build-asan/server_test \
    exec ./scripts/server_test.sh) || status=$?
  check_reports server "$status"
fi
echo "l2kv: sanitizer tests passed (address, undefined, leaks)"
