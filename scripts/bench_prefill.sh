#!/usr/bin/env bash
# Prefill on the local GPU, in one run: l2kv_bench_prefill (the whole prefill of
# synthetic:llama3-8b against the same-run cuBLASLt rate, then the prefill-attention kernel over
# 1 and 4 prompts of 512 to 32K tokens) and, where torch is installed, PyTorch SDPA's flash and
# cuDNN backends on the same sweep and head layout (32:8). Logs and JSON go to
# bench/results/<date>-<gpu>-prefill/. Arguments go to l2kv_bench_prefill (keep its default
# --model for the peers' heads to match). L2KV_SKIP_BUILD=1 uses the binaries already in build/.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${L2KV_SKIP_BUILD:-0} == 1 ]] || ./scripts/build.sh
source scripts/gpu_results.sh
if ! have_gpu; then
  echo "l2kv bench_prefill: no NVIDIA GPU on this machine; the benchmark needs a Hopper GPU (sm_90)." >&2
  exit 2
fi
out=$(results_dir "-prefill")
./build/l2kv_bench_prefill --json "$out/prefill.json" "$@" | tee "$out/prefill.log"
# The peers take the same sweep: --attention-lengths and --attention-prompts become their
# --lengths and --prompts.
peer_args=()
forward=""
for arg in "$@"; do
  case "$arg" in
    --attention-lengths) forward=--lengths; peer_args+=(--lengths) ;;
    --attention-prompts) forward=--prompts; peer_args+=(--prompts) ;;
    --*) forward="" ;;
    *) if [[ -n $forward ]]; then peer_args+=("$arg"); fi ;;
  esac
done
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  python3 bench/model/sdpa_prefill_peers.py --heads 32:8 --json "$out/prefill_peers.json" \
    "${peer_args[@]}" | tee "$out/prefill_peers.log"
else
  echo "l2kv bench_prefill: no torch with CUDA here; no SDPA peers" | tee "$out/prefill_peers.log"
fi
echo "results: $out/prefill.log, $out/prefill_peers.log"
