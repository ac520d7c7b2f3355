#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang++-14 with -fsanitize=fuzzer,address,undefined)
# into build-fuzz/ and runs them over their corpora.
#   scripts/fuzz.sh                     every target, 60 s each
#   scripts/fuzz.sh tokenizer 3600      one target for an hour
#   scripts/fuzz.sh all 12              every target, 12 s each (CI)
#   scripts/fuzz.sh build               build only
#   L2KV_FUZZ_RUNS=10000000 scripts/fuzz.sh safetensors 3600
#                                       stop at 10 M executions or an hour, whichever comes first
# New inputs found go to build-fuzz/corpus/<target>/ (the committed seeds in fuzz/corpus/ are
# only read); a crash is written to build-fuzz/crashes/<target>/ and fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(safetensors model_config tokenizer chat_template openai_request json_schema tool_calls)
which="${1:-all}"
seconds="${2:-60}"
cxx="${L2KV_FUZZ_CXX:-clang++-14}"

cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER="$cxx" >/dev/null
ninja -C build-fuzz
[[ "$which" == build ]] && exit 0
[[ "$which" == all ]] || targets=("$which")

for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t" "build-fuzz/crashes/$t"
  dict=()
  [[ -f "fuzz/$t.dict" ]] && dict=("-dict=fuzz/$t.dict")
  runs=()
  [[ -n "${L2KV_FUZZ_RUNS:-}" ]] && runs=("-runs=$L2KV_FUZZ_RUNS")
  echo "== fuzz_$t for ${seconds}s${L2KV_FUZZ_RUNS:+ or $L2KV_FUZZ_RUNS executions}"
  # -timeout: an input that runs over 5 s is a hang; -rss_limit_mb: one that needs over 2 GB
  # is unbounded memory. Both are failures like crashes.
  ./build-fuzz/fuzz_"$t" "${dict[@]}" "${runs[@]}" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 \
    -print_final_stats=1 -print_funcs=0 -artifact_prefix="build-fuzz/crashes/$t/" \
    "build-fuzz/corpus/$t" "fuzz/corpus/$t"
done
