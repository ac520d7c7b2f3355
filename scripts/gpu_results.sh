# Sourced by the GPU benchmark scripts: whether this machine has an NVIDIA GPU, and the results
# folder of a run on it (bench/results/<date>-<gpu name><suffix>, created).
have_gpu() {
  command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1
}
results_dir() {
  local gpu
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd '[:alnum:]-')
  local dir="bench/results/$(date -u +%F)-${gpu}${1:-}"
  mkdir -p "$dir"
  echo "$dir"
}
