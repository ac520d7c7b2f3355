#!/usr/bin/env bash
# The main job. On a machine with a Hopper GPU: builds l2kv and runs a short end-to-end
# `l2kv bench` on synthetic:llama3-8b (random weights in the real shape; a few minutes):
# steady-state decode steps at context 1024 (batch 1 to 256) and the offline workload
# (512-token prompts, 512 output tokens) at concurrency 1, 16 and 64, for l2kv's split kernel
# and the paper's paged_v1 kernel with and without L2 prefetch; then, where torch is installed,
# the PyTorch + transformers peer (end to end) and the compiled-PyTorch peer (steady steps at
# the same batches; about 6 minutes of compiling); results under bench/results/<date>-<gpu>/.
# Arguments go to `l2kv bench`.
# Without a GPU: runs `l2kv generate` on a tiny test model on the CPU backend and says so.
# L2KV_SKIP_BUILD=1 uses the binaries already in build/.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ ${L2KV_SKIP_BUILD:-0} == 1 ]] || ./scripts/build.sh
source scripts/gpu_results.sh
if ! have_gpu; then
  echo "l2kv: no NVIDIA GPU here; the benchmark needs a Hopper GPU (sm_90). Running the engine"
  echo "l2kv: on the CPU backend instead: greedy continuations of a tiny Llama-3-style test model."
  ./build/l2kv generate --model tests/model/fixtures/llama3-gqa --device cpu \
    --prompt-ids 1,17,300,42,9 --prompt-ids 402,467,207,236,209 --prompt-ids 5,6,7 \
    --temperature 0 --max-tokens 32 --ignore-eos --output-format jsonl
  exit 0
fi
out=$(results_dir)
./build/l2kv bench --model synthetic:llama3-8b --input-len 512 --output-len 512 \
  --concurrency 1 16 64 --steady-batch 1 16 64 128 256 --steady-context 1024 \
  --variants split paged_v1:off paged_v1:on --json "$out/engine_bench.json" "$@" |
  tee "$out/engine_bench.log"
peer=()
ceiling=$(python3 -c "import json; print(json.load(open('$out/engine_bench.json'))['ceiling_gbps'])")
if python3 -c "import torch, transformers" 2>/dev/null; then
  python3 bench/engine/transformers_peer.py --models llama3-8b --batches 1 16 64 \
    --input-len 512 --output-len 512 --ceiling-gbps "$ceiling" --json "$out/engine_peer.json" |
    tee "$out/engine_peer.log"
  peer=(--peer "$out/engine_peer.json")
else
  echo "l2kv bench: python3 has no torch + transformers; the PyTorch peer is skipped"
fi
if python3 -c "import torch" 2>/dev/null; then
  python3 bench/engine/compiled_torch_peer.py --models llama3-8b --batches 1 16 64 128 256 \
    --context 1024 --ceiling-gbps "$ceiling" --time-budget-s 900 --json "$out/compiled_peer.json" |
    tee "$out/compiled_peer.log" ||
    echo "l2kv bench: the compiled-PyTorch peer stopped early (see $out/compiled_peer.log)"
  if [[ -f $out/compiled_peer.json ]]; then peer+=(--compiled-peer "$out/compiled_peer.json"); fi
else
  echo "l2kv bench: python3 has no torch; the compiled-PyTorch peer is skipped"
fi
./scripts/bench_report.sh --bench "$out/engine_bench.json" "${peer[@]}" \
  --out-md "$out/engine_bench.md" --out-png "$out/engine_bench.png" ||
  echo "l2kv bench: report not written (see above); the JSON is in $out"
echo "results: $out/engine_bench.md"
