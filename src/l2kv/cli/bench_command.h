// `l2kv bench`: offline decode throughput (the paper's workload) on a model or a synthetic
// shape, for several decode-attention variants in one run, against the streaming-read ceiling
// measured in the same run; and a steady-state mode that times one decode step at a given
// batch and context with the KV cache filled synthetically.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace l2kv::cli {

std::function<int()> add_bench_command(CLI::App& app);

}  // namespace l2kv::cli
