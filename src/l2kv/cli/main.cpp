// l2kv: one executable, one subcommand per front end, each a thin shell over the engine.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "l2kv/cli/bench_command.h"
#include "l2kv/cli/bench_serve_command.h"
#include "l2kv/cli/generate_command.h"
#include "l2kv/cli/serve_command.h"
#include "l2kv/core/error.h"

int main(int argc, char** argv) {
  CLI::App app("l2kv: LLM inference for NVIDIA Hopper GPUs with L2 prefetch of the KV cache");
  app.require_subcommand(1);
  const auto generate = l2kv::cli::add_generate_command(app);
  const auto bench = l2kv::cli::add_bench_command(app);
  const auto bench_serve = l2kv::cli::add_bench_serve_command(app);
  const auto serve = l2kv::cli::add_serve_command(app);
  CLI11_PARSE(app, argc, argv);
  try {
    if (app.got_subcommand("generate")) return generate();
    if (app.got_subcommand("bench")) return bench();
    if (app.got_subcommand("bench-serve")) return bench_serve();
    if (app.got_subcommand("serve")) return serve();
  } catch (const l2kv::Error& e) {
    std::fprintf(stderr, "l2kv: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "l2kv: unexpected error: %s\n", e.what());
    return 1;
  }
  return 0;
}
