#!/usr/bin/env bash
# The main job: builds l2kv and runs the decode-attention benchmark on the local GPU (an H100;
# about 10 minutes for the full grid), then PyTorch SDPA peers where torch is installed, and
# writes JSON, logs and a markdown table under bench/results/<date>-<gpu>/.
# Arguments are passed to l2kv_bench_decode (for example --models llama3-8b --batches 1 64).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "l2kv bench: no NVIDIA GPU on this machine; the benchmark needs an H100 (sm_90)." >&2
  exit 2
fi
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd '[:alnum:]-')
out="bench/results/$(date -u +%F)-${gpu}"
mkdir -p "$out"
./build/l2kv_bench_decode --json "$out/bench.json" "$@" | tee "$out/bench.log"
peers=()
if python3 -c "import torch" 2>/dev/null; then
  python3 bench/attention/sdpa_peers.py --json "$out/peers.json" | tee "$out/peers.log"
  peers=(--peers "$out/peers.json")
else
  echo "l2kv bench: python3 has no torch; PyTorch SDPA peers skipped"
fi
python3 bench/attention/report.py --bench "$out/bench.json" "${peers[@]}" --out "$out/decode_attention.md"
echo "results: $out/decode_attention.md"
