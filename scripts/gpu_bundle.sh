#!/usr/bin/env bash
# Packs what a GPU machine without a toolchain needs to run l2kv's GPU tests and benchmarks
# into build/gpu_bundle.tar.xz (about 20 MB): the executables in build/ and the Debian ICU 72 and cpp-httplib
# libraries they link (Ubuntu 24.04 has ICU 74). On the GPU machine, from the repository root:
#   tar -xJf build/gpu_bundle.tar.xz -C build && export LD_LIBRARY_PATH=$PWD/build/lib
# then run build/l2kv_tests with L2KV_REQUIRE_GPU=1, build/l2kv bench, L2KV_SKIP_BUILD=1
# scripts/bench.sh, and so on. Builds nothing: run scripts/build.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/lib"
for exe in l2kv l2kv_tests l2kv_bench_decode l2kv_bench_step l2kv_bench_gemv l2kv_bench_prefill l2kv_bench_sampler; do
  [[ -x build/$exe ]] && cp "build/$exe" "$stage/"
done
for dir in baseline variant; do  # an earlier build, or an experiment built from a patch, to compare in the same run
  [[ -d build/$dir ]] && cp -r "build/$dir" "$stage/"
done
for lib in libicuuc.so.72 libicudata.so.72 libcpp-httplib.so.0.11 libbrotlidec.so.1 libbrotlienc.so.1 libbrotlicommon.so.1; do
  cp "$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')" "$stage/lib/"
done
tar -C "$stage" -cf - . | xz -T0 -6 >build/gpu_bundle.tar.xz
ls -l build/gpu_bundle.tar.xz
