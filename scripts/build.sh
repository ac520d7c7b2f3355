#!/usr/bin/env bash
# Configures and builds l2kv (Release, sm_90a) into build/. Extra arguments go to CMake.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
ninja -C build
