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

// CLI11 converts with base 0 (010 is octal, 0x10 hex): the checks take plain decimal only, so
// what they check is what CLI11 stores. Empty when `text` is such, else why not.
inline std::string decimal_form(const std::string& text) {
  const size_t sign = !text.empty() && (text[0] == '-' || text[0] == '+') ? 1 : 0;
  if (text.size() > sign + 1 && text[sign] == '0')
    return "'" + text + "' has a leading zero or a base prefix: write it in decimal";
  return {};
}

// A whole number in [lo, hi].
inline CLI::Validator whole_number(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        if (std::string bad = decimal_form(text); !bad.empty()) return bad;
        // from_chars takes no '+'; CLI11 does.
        const size_t plus = !text.empty() && text[0] == '+' ? 1 : 0;
        int64_t v = 0;
        const auto [end, error] = std::from_chars(text.data() + plus, text.data() + text.size(), v);
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
        if (std::string bad = decimal_form(text); !bad.empty()) return bad;
        const size_t plus = !text.empty() && text[0] == '+' ? 1 : 0;
        uint64_t v = 0;
        const auto [end, error] = std::from_chars(text.data() + plus, text.data() + text.size(), v);
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
  // Triggered as each is parsed, so of the two the last on the command line wins.
  app.add_flag_callback(
         "--" + name, [&value] { value = true; }, help)
      ->trigger_on_parse();
  app.add_flag_callback(
         "--no-" + name, [&value] { value = false; }, "Turn --" + name + " off")
      ->trigger_on_parse();
}

}  // namespace l2kv::cli
