#!/usr/bin/env bash
# Writes the markdown report and PNG plot of an `l2kv bench` run beside its PyTorch peer:
#   scripts/bench_report.sh --bench bench.json [more.json ...] [--peer peer.json] \
#     --out-md report.md [--out-png report.png]
# The plot needs matplotlib: installs Debian's python3-matplotlib when it is missing (sudo if
# not root; nothing to do once installed) and runs the report with Debian's python, where that
# package lands. Without it (no apt mirror reachable) the markdown is still written.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"  # paths in the arguments stay relative to the caller
py=python3
[[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
if ! "$py" -c "import matplotlib" >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && ! dpkg -s python3-matplotlib >/dev/null 2>&1; then
    echo "l2kv: installing python3-matplotlib for the plot"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    if ! { $SUDO apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-matplotlib; }; then
      echo "l2kv: python3-matplotlib could not be installed; writing the markdown without the plot" >&2
    fi
  fi
fi
exec "$py" "$here/bench/engine/report.py" "$@"
