#!/usr/bin/env bash
# Fails when a C++/CUDA source differs from .clang-format's layout (run clang-format -i to fix).
set -euo pipefail
cd "$(dirname "$0")/.."
find src tests bench \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -not -path '*/node_modules/*' -print0 |
  xargs -0 clang-format --dry-run --Werror
