// Flag helpers the subcommands share. Checks of whole-number flags with messages that name the
// flag's range (CLI11's own fall short: NonNegativeNumber names DBL_MAX as its bound, and its
// conversions wrap "-1" into an unsigned flag and clamp numbers beyond 64 bits without a word),
// on/off flag pairs whose help does not read as "off by default", and the command line as given.
#pragma once

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

namespace l2kv::cli {

// CLI11 converts with base 0 (010 is octal, 0x10 hex): the checks take plain decimal only, so
// what they check is what CLI11 stores. Empty when `text` is such, else why not.
inline std::string decimal_form(const std::string& text) {
  const size_t sign = !text.empty() && (text[0] == '-' || text[0] == '+') ? 1 : 0;
  if (text.size() > sign + 1 && text[sign] == '0')
    return "'" + text + "' has a leading zero or a base prefix: write it in decimal";
  return {};
}

// Reads `text` as a decimal T into `v`: empty when it is one, else why not, `expected` naming
// what is (e.g. "a whole number in [0, 100]").
template <typename T>
std::string read_decimal(const std::string& text, T& v, const std::string& expected) {
  if (std::string bad = decimal_form(text); !bad.empty()) return bad;
  if (std::is_unsigned_v<T> && !text.empty() && text[0] == '-')
    return text + " is negative: " + expected + " is expected";
  const size_t plus = !text.empty() && text[0] == '+' ? 1 : 0;  // from_chars takes no '+'
  const auto [end, error] = std::from_chars(text.data() + plus, text.data() + text.size(), v);
  if (error == std::errc::result_out_of_range)
    return text + " is out of range: " + expected + " is expected";
  if (error != std::errc() || end != text.data() + text.size())
    return "'" + text + "' is not a whole number (" + expected + " is expected)";
  return {};
}

// A whole number in [lo, hi].
inline CLI::Validator whole_number(int64_t lo, int64_t hi) {
  const std::string range = "[" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  return CLI::Validator(
      [lo, hi, range](std::string& text) -> std::string {
        int64_t v = 0;
        if (std::string bad = read_decimal(text, v, "a whole number in " + range); !bad.empty())
          return bad;
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
        return read_decimal(text, v,
                            "0 to " + std::to_string(std::numeric_limits<uint64_t>::max()));
      },
      "");
}

// The command line a subcommand was given, as "program --flag value ...", to store beside its
// results: flags by their name alone, options in `secret` (an API key) left out.
inline std::string command_line(const std::string& program, const CLI::App& cmd,
                                std::initializer_list<std::string_view> secret = {}) {
  std::string line = program;
  for (const CLI::Option* opt : cmd.get_options()) {
    if (opt->count() == 0 || opt->get_name().empty() || opt->get_name() == "--help") continue;
    if (std::find(secret.begin(), secret.end(), opt->get_name()) != secret.end()) continue;
    line += " " + opt->get_name();
    if (opt->get_expected_min() == 0) continue;  // a flag: its name is the whole of it
    for (const std::string& value : opt->results()) line += " " + value;
  }
  return line;
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
