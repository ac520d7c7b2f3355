// `l2kv generate`: prompts from arguments, a file or stdin; text or JSONL out; progress and
// tokens/s on stderr. A thin shell over the Engine.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace l2kv::cli {

// Adds the subcommand to `app`; the returned function runs it (after parsing) and returns the
// process exit status.
std::function<int()> add_generate_command(CLI::App& app);

}  // namespace l2kv::cli
