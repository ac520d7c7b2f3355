#!/usr/bin/env bash
# The decode-attention kernel benchmark: builds l2kv and runs the decode-attention grid on the
# local GPU (an H100; about 10 minutes for the full grid), then PyTorch SDPA peers where torch is installed, then
# the same grid with an fp8 KV cache (split only, to keep the run short), the PDL step chain, then
# the prefill benchmark on synthetic:llama3-8b (scripts/bench_prefill.sh, into
# bench/results/<date>-<gpu>-prefill/), and writes JSON, logs and markdown under
# bench/results/<date>-<gpu>/. Arguments go to l2kv_bench_decode (for example
# --models llama3-8b --batches 1 64). L2KV_SKIP_BUILD=1 uses the binaries already in build/.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${L2KV_SKIP_BUILD:-0} == 1 ]] || ./scripts/build.sh
source scripts/gpu_results.sh
if ! have_gpu; then
  echo "l2kv bench_attention: no NVIDIA GPU on this machine; the benchmark needs a Hopper GPU (sm_90)." >&2
  exit 2
fi
out=$(results_dir)
./build/l2kv_bench_decode --json "$out/bench.json" "$@" | tee "$out/bench.log"
# The peers take the same --models, --batches and --contexts as the benchmark.
peer_args=()
forward=0
for arg in "$@"; do
  case "$arg" in
    --models|--batches|--contexts) forward=1; peer_args+=("$arg") ;;
    --*) forward=0 ;;
    *) ((forward)) && peer_args+=("$arg") ;;
  esac
done
peers=()
if python3 -c "import torch" 2>/dev/null; then
  python3 bench/attention/sdpa_peers.py --json "$out/peers.json" "${peer_args[@]}" | tee "$out/peers.log"
  peers=(--peers "$out/peers.json")
else
  echo "l2kv bench: python3 has no torch; PyTorch SDPA peers skipped"
fi
python3 bench/attention/report.py --bench "$out/bench.json" "${peers[@]}" --out "$out/decode_attention.md"
# The split kernel over an fp8 E4M3 KV cache on the same grid, and its speedup over 16-bit KV.
./build/l2kv_bench_decode --json "$out/bench_fp8.json" --kv-cache-dtype fp8_e4m3 --v1-prefetch none "$@" |
  tee "$out/bench_fp8.log"
python3 bench/attention/compare_kv_dtypes.py "$out/bench.json" "$out/bench_fp8.json" >"$out/fp8_vs_bf16.md"
# The attention chain of a decode step with and without programmatic dependent launch.
./build/l2kv_bench_step --json "$out/step.json" | tee "$out/step.log"
# The prefill benchmark and its SDPA peers, into their own folder (${out}-prefill).
L2KV_SKIP_BUILD=1 ./scripts/bench_prefill.sh
echo "results: $out/decode_attention.md, $out/fp8_vs_bf16.md, $out/step.log, ${out}-prefill/"
