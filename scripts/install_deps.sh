#!/usr/bin/env bash
# Installs the Debian packages the build needs. Idempotent; safe to run on every start.
set -euo pipefail
packages=(cmake ninja-build g++ pkg-config clang-format libgtest-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libicu-dev libcpp-httplib-dev python3
  clang-14 libclang-rt-14-dev)  # clang and libFuzzer for the fuzz targets (scripts/fuzz.sh)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "l2kv: installing ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
  echo "l2kv: the CUDA 13 toolkit is expected at /usr/local/cuda (nvcc not found)" >&2
  exit 1
fi
