// Flag helpers the subcommands share. Checks of whole-number flags with messages that name the
// flag's range (CLI11's own fall short: NonNegativeNumber names DBL_MAX as its bound, and its
// conversions wrap "-1" into an unsigned flag and clamp numbers beyond 64 bits without a word),
// and on/off flag pairs whose help does not read as "off by default".
#pragma once

#include <CLI/CLI.hpp>
#include <charconv>
#include <cstdint>
#include <limits>
#include <string>

namespace l2kv::cli {

// A whole number in [lo, hi].
inline CLI::Validator whole_number(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        int64_t v = 0;
        const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), v);
        const std::string range = "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
        if (error == std::errc::result_out_of_range)
          return text + " is out of range: a whole number in " + range + " is expected";
        if (error != std::errc() || end != text.data() + text.size())
          return "'" + text + "' is not a whole number (one in " + range + " is expected)";
        if (v < lo || v > hi) return text + " is not in " + range;
        return {};
      },
      "INT in [" + std::to_string(lo) + " - " + std::to_string(hi) + "]");
}

// A whole number in [0, 2^64 - 1], for unsigned flags.
inline CLI::Validator unsigned_number() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        uint64_t v = 0;
        const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), v);
        if (!text.empty() && text[0] == '-') return text + " is negative: 0 or more is expected";
        if (error == std::errc::result_out_of_range)
          return text + " is out of range: at most " +
                 std::to_string(std::numeric_limits<uint64_t>::max()) + " is expected";
        if (error != std::errc() || end != text.data() + text.size())
          return "'" + text + "' is not a whole number (0 or more is expected)";
        return {};
      },
      "");
}

// --NAME and --no-NAME setting `value` (vLLM's style); `help` says which is the default.
// CLI11's "--NAME,!--no-NAME" form prints "{false}" beside the names, which reads as the default.
inline void add_on_off_flag(CLI::App& app, const std::string& name, bool& value,
                            const std::string& help) {
  app.add_flag_callback(
      "--" + name, [&value] { value = true; }, help);
  app.add_flag_callback(
      "--no-" + name, [&value] { value = false; }, "Turn --" + name + " off");
}

}  // namespace l2kv::cli
