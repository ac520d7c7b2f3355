// `l2kv bench-serve`: a load generator against any OpenAI-compatible server (vLLM, SGLang,
// `l2kv serve`): random prompts of a given input and output length, Poisson arrivals or all at
// once, an optional cap on requests in flight, every request streamed; reports throughput and
// TTFT, TPOT, ITL and end-to-end latency percentiles in the shape `vllm bench serve` prints,
// as text and JSON.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace l2kv::cli {

// Adds the subcommand to `app`; the returned function runs it once the command line is parsed.
std::function<int()> add_bench_serve_command(CLI::App& app);

}  // namespace l2kv::cli
