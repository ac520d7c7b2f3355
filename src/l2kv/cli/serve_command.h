// `l2kv serve`: the OpenAI-compatible HTTP server over one engine thread. SIGINT/SIGTERM stop
// it cleanly: the listener closes, requests in flight are aborted, the process exits 0.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace l2kv::cli {

// Adds the subcommand to `app`; the returned function runs it (after parsing) and returns the
// process exit status.
std::function<int()> add_serve_command(CLI::App& app);

}  // namespace l2kv::cli
