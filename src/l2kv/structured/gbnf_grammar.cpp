#include "l2kv/structured/gbnf_grammar.h"

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/core/hex_digit.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv::structured {
namespace {

constexpr int kMaxNesting = 128;  // groups within groups

class GbnfParser {
 public:
  explicit GbnfParser(std::string_view text) : t_(text) {}

  Grammar parse() {
    skip_space(true);
    while (pos_ < t_.size()) {
      const std::string name = rule_name();
      if (name.empty()) fail("a rule name");
      skip_space(false);
      if (t_.substr(pos_, 3) != "::=") fail("'::=' after '" + name + "'");
      pos_ += 3;
      const int32_t r = rule_id(name);
      if (defined_.count(name)) fail("a second definition of '" + name + "'");
      defined_[name] = true;
      for (const auto& alt : alternation(0)) g_.add_alternative(r, alt);
      skip_space(true);
    }
    for (const auto& [name, id] : ids_)
      if (!defined_.count(name)) throw Error("grammar: the rule '" + name + "' is not defined");
    const auto root = ids_.find("root");
    if (root == ids_.end()) throw Error("grammar: no 'root' rule");
    g_.set_root(root->second);
    return std::move(g_);
  }

 private:
  [[noreturn]] void fail(const std::string& expected) const {
    size_t line = 1;
    for (size_t i = 0; i < pos_ && i < t_.size(); ++i) line += t_[i] == '\n';
    throw Error("grammar: expected " + expected + " at line " + std::to_string(line));
  }

  // Spaces and comments; newlines too when `newlines` (between rules, or inside a group).
  void skip_space(bool newlines) {
    while (pos_ < t_.size()) {
      const char c = t_[pos_];
      if (c == '#') {
        while (pos_ < t_.size() && t_[pos_] != '\n') ++pos_;
      } else if (c == ' ' || c == '\t' || c == '\r' || (newlines && c == '\n')) {
        ++pos_;
      } else if (c == '\n' && pos_ + 1 < t_.size() &&
                 (t_[pos_ + 1] == ' ' || t_[pos_ + 1] == '\t' || t_[pos_ + 1] == '|')) {
        ++pos_;  // an indented or '|' line continues the rule
      } else {
        break;
      }
    }
  }

  static bool name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
  }

  std::string rule_name() {
    const size_t start = pos_;
    while (pos_ < t_.size() && name_char(t_[pos_])) ++pos_;
    return std::string(t_.substr(start, pos_ - start));
  }

  int32_t rule_id(const std::string& name) {
    const auto it = ids_.find(name);
    if (it != ids_.end()) return it->second;
    const int32_t id = g_.new_rule(name);
    ids_.emplace(name, id);
    return id;
  }

  uint32_t hex(size_t digits) {
    uint32_t v = 0;
    for (size_t i = 0; i < digits; ++i) {
      if (pos_ >= t_.size()) fail("hex digits");
      const char c = t_[pos_++];
      const int d = hex_digit_value(c);
      if (d < 0) fail("a hex digit");
      v = v << 4 | static_cast<uint32_t>(d);
    }
    return v;
  }

  // One character of a literal or class (a whole UTF-8 sequence, or an escape).
  uint32_t character() {
    if (pos_ >= t_.size()) fail("a character");
    const auto b = static_cast<uint8_t>(t_[pos_]);
    if (b == '\\') {
      ++pos_;
      if (pos_ >= t_.size()) fail("an escape");
      const char e = t_[pos_++];
      switch (e) {
        case 'n':
          return '\n';
        case 't':
          return '\t';
        case 'r':
          return '\r';
        case 'x':
          return hex(2);
        case 'u':
          return hex(4);
        case 'U':
          return hex(8);
        default:
          return static_cast<uint8_t>(e);
      }
    }
    if (utf8::valid_sequence_length(t_, pos_) == 0) fail("valid UTF-8");
    return utf8::next(t_, pos_);
  }

  Element char_class() {
    ++pos_;  // [
    bool negated = false;
    if (pos_ < t_.size() && t_[pos_] == '^') negated = true, ++pos_;
    ByteSet ascii;
    std::vector<uint32_t> others;
    while (pos_ < t_.size() && t_[pos_] != ']') {
      const uint32_t lo = character();
      uint32_t hi = lo;
      if (pos_ + 1 < t_.size() && t_[pos_] == '-' && t_[pos_ + 1] != ']') {
        ++pos_;
        hi = character();
      }
      if (hi < lo) fail("a character range in order");
      if (hi >= 0x80 && (negated || hi - std::max<uint32_t>(lo, 0x80) >= 256))
        fail("a class within ASCII (or listing at most 256 non-ASCII characters, not negated)");
      for (uint32_t cp = lo; cp <= hi; ++cp) {
        if (cp < 0x80)
          ascii.add(static_cast<uint8_t>(cp));
        else
          others.push_back(cp);
      }
    }
    if (pos_ >= t_.size()) fail("']'");
    ++pos_;
    if (negated) {
      ByteSet inverse;
      for (int b = 0; b < 0x80; ++b)
        if (!ascii.has(static_cast<uint8_t>(b))) inverse.add(static_cast<uint8_t>(b));
      return utf8_char(g_, inverse, true);
    }
    std::vector<std::vector<Element>> alts;
    if (!ascii.empty()) alts.push_back({g_.bytes(ascii)});
    for (uint32_t cp : others) alts.push_back({g_.literal(utf8::encode(cp))});
    if (alts.empty()) fail("a non-empty class");
    return g_.choice(alts);
  }

  Element primary(int depth) {
    if (pos_ >= t_.size()) fail("an item");
    const char c = t_[pos_];
    if (c == '"') {
      ++pos_;
      std::string text;
      while (pos_ < t_.size() && t_[pos_] != '"') utf8::append(text, character());
      if (pos_ >= t_.size()) fail("a closing '\"'");
      ++pos_;
      return g_.sequence({g_.literal(text)});
    }
    if (c == '[') return char_class();
    if (c == '.') {
      ++pos_;
      ByteSet any;
      any.add_range(0, 0x7F);
      return utf8_char(g_, any, true);
    }
    if (c == '(') {
      if (depth >= kMaxNesting) fail("groups nested at most 128 deep");
      ++pos_;
      const auto alts = alternation(depth + 1);
      skip_space(true);
      if (pos_ >= t_.size() || t_[pos_] != ')') fail("')'");
      ++pos_;
      return g_.choice(alts);
    }
    const std::string name = rule_name();
    if (name.empty()) fail("a literal, a class, a group or a rule name");
    return Grammar::rule(rule_id(name));
  }

  // {m}, {m,} or {m,n} after an item.
  Element braces(Element item) {
    ++pos_;
    // Every digit is read, so a count too large is named as such instead of failing on a
    // digit past some width.
    auto number = [&] {
      const size_t start = pos_;
      while (pos_ < t_.size() && t_[pos_] >= '0' && t_[pos_] <= '9') ++pos_;
      if (pos_ == start) fail("a repetition count");
      std::string digits(t_.substr(start, pos_ - start));
      digits.erase(0, std::min(digits.find_first_not_of('0'), digits.size() - 1));
      if (digits.size() > 6 || std::stoll(digits) > Grammar::kMaxRepeat)
        throw Error("grammar: repetition count " + digits + " is above " +
                    std::to_string(Grammar::kMaxRepeat));
      return static_cast<int64_t>(std::stoll(digits));
    };
    const int64_t min = number();
    int64_t max = min;
    if (pos_ < t_.size() && t_[pos_] == ',') {
      ++pos_;
      max = pos_ < t_.size() && t_[pos_] == '}' ? -1 : number();
    }
    if (pos_ >= t_.size() || t_[pos_] != '}') fail("'}'");
    ++pos_;
    return g_.repeat(item, min, max);
  }

  std::vector<std::vector<Element>> alternation(int depth) {
    std::vector<std::vector<Element>> alts(1);
    for (;;) {
      skip_space(depth > 0);
      if (pos_ >= t_.size() || t_[pos_] == '\n' || t_[pos_] == ')') break;
      if (t_[pos_] == '|') {
        ++pos_;
        alts.emplace_back();
        continue;
      }
      // A rule name followed by ::= starts the next rule.
      const size_t save = pos_;
      if (depth == 0 && name_char(t_[pos_])) {
        rule_name();
        skip_space(false);
        const bool next_rule = t_.substr(pos_, 3) == "::=";
        pos_ = save;
        if (next_rule) break;
      }
      Element item = primary(depth);
      for (bool more = true; more && pos_ < t_.size();) {
        const char op = t_[pos_];
        if (op == '*') {
          ++pos_, item = g_.star(item);
        } else if (op == '+') {
          ++pos_, item = g_.repeat(item, 1, -1);
        } else if (op == '?') {
          ++pos_, item = g_.optional(item);
        } else if (op == '{') {
          item = braces(item);
        } else {
          more = false;
        }
      }
      alts.back().push_back(item);
    }
    return alts;
  }

  Grammar g_;
  std::string_view t_;
  size_t pos_ = 0;
  std::map<std::string, int32_t> ids_;
  std::map<std::string, bool> defined_;
};

}  // namespace

Grammar gbnf_grammar(std::string_view text) {
  return GbnfParser(text).parse();
}

}  // namespace l2kv::structured
