#include "l2kv/structured/regex_grammar.h"

#include <algorithm>
#include <cstdio>

#include "l2kv/core/error.h"
#include "l2kv/core/hex_digit.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv::structured {
namespace {

constexpr uint32_t kMaxClassCodePoints = 256;  // non-ASCII members listed one by one

// A set of characters: ASCII bytes, every non-ASCII character, or listed non-ASCII ones.
struct CharClass {
  ByteSet ascii;
  bool all_non_ascii = false;
  std::vector<uint32_t> code_points;
};

// How one ASCII character is written inside a JSON string.
std::string json_escaped(uint8_t c) {
  switch (c) {
    case '"':
      return "\\\"";
    case '\\':
      return "\\\\";
    case '\n':
      return "\\n";
    case '\t':
      return "\\t";
    case '\r':
      return "\\r";
    default:
      break;
  }
  if (c < 0x20) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\u%04X", c);
    return buf;
  }
  return std::string(1, static_cast<char>(c));
}

bool needs_json_escape(uint8_t c) {
  return c == '"' || c == '\\' || c < 0x20;
}

Element class_element(Grammar& g, const CharClass& cls, RegexText text) {
  std::vector<std::vector<Element>> alts;
  ByteSet plain = cls.ascii;
  if (text == RegexText::kJsonString) {
    for (int c = 0; c < 0x80; ++c) {
      if (!cls.ascii.has(static_cast<uint8_t>(c)) || !needs_json_escape(static_cast<uint8_t>(c)))
        continue;
      plain.words[c >> 6] &= ~(uint64_t{1} << (c & 63));
      alts.push_back({g.literal(json_escaped(static_cast<uint8_t>(c)))});
    }
  }
  if (!plain.empty()) alts.insert(alts.begin(), {g.bytes(plain)});
  if (cls.all_non_ascii) alts.push_back({g.utf8_multibyte()});
  for (uint32_t cp : cls.code_points) alts.push_back({g.literal(utf8::encode(cp))});
  if (alts.empty()) throw Error("regex: a character class that matches nothing");
  if (alts.size() == 1 && alts[0].size() == 1) return alts[0][0];
  return g.choice(alts);
}

CharClass digit_class() {
  CharClass c;
  c.ascii.add_range('0', '9');
  return c;
}
CharClass word_class() {
  CharClass c;
  c.ascii.add_range('0', '9');
  c.ascii.add_range('a', 'z');
  c.ascii.add_range('A', 'Z');
  c.ascii.add('_');
  return c;
}
CharClass space_class() {
  CharClass c;
  for (char s : {' ', '\t', '\n', '\r', '\f', '\v'}) c.ascii.add(static_cast<uint8_t>(s));
  return c;
}
// The complement among ASCII; non-ASCII characters join unless JavaScript's class of the same
// name could match some of them (\s matches Unicode spaces, so \S stays ASCII).
CharClass complement(const CharClass& c, bool non_ascii) {
  CharClass out;
  for (int b = 0; b < 0x80; ++b)
    if (!c.ascii.has(static_cast<uint8_t>(b))) out.ascii.add(static_cast<uint8_t>(b));
  out.all_non_ascii = non_ascii;
  return out;
}

class RegexParser {
 public:
  RegexParser(Grammar& g, std::string_view pattern, RegexText text)
      : g_(g), p_(pattern), text_(text) {}

  Element parse() {
    Element e = alternation();
    if (pos_ != p_.size()) fail("unbalanced ')'");
    return e;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error("regex: " + what + " at offset " + std::to_string(pos_) + " of /" +
                std::string(p_) + "/");
  }
  bool at_end() const { return pos_ >= p_.size(); }
  char peek() const { return p_[pos_]; }

  static constexpr int kMaxGroupDepth = 128;

  Element alternation() {
    std::vector<std::vector<Element>> branches;
    branches.push_back(concatenation());
    while (!at_end() && peek() == '|') {
      ++pos_;
      branches.push_back(concatenation());
    }
    if (branches.size() == 1) return g_.sequence(branches[0]);
    return g_.choice(branches);
  }

  std::vector<Element> concatenation() {
    std::vector<Element> items;
    while (!at_end() && peek() != '|' && peek() != ')') {
      Element atom_element = atom();
      items.push_back(quantified(atom_element));
    }
    return items;
  }

  // Reads {n}, {n,} or {n,m} at pos_ when it is one (else leaves pos_).
  bool braces(int64_t& min, int64_t& max) {
    size_t q = pos_ + 1;
    // Every digit is read (a count too large for the grammar is then refused by repeat(), not
    // taken as literal text), the value held below overflow.
    auto number = [&](int64_t& v) {
      constexpr int64_t kCap = int64_t{1} << 40;
      const size_t start = q;
      v = 0;
      while (q < p_.size() && p_[q] >= '0' && p_[q] <= '9')
        v = std::min(kCap, v * 10 + (p_[q++] - '0'));
      return q > start;
    };
    if (!number(min)) return false;
    max = min;
    if (q < p_.size() && p_[q] == ',') {
      ++q;
      if (!number(max)) max = -1;
    }
    if (q >= p_.size() || p_[q] != '}') return false;
    pos_ = q + 1;
    return true;
  }

  // At most one quantifier per atom: JavaScript calls a** "nothing to repeat", and stacked
  // repetitions of repetitions are what makes a grammar's stack sets explode.
  Element quantified(Element e) {
    int64_t min = 0, max = 0;
    if (!quantifier(min, max)) return e;
    if (!at_end() && peek() == '?') ++pos_;  // lazy: the same texts match
    if (!at_end() && peek() == '+') fail("possessive quantifiers are not supported");
    int64_t unused_min = 0, unused_max = 0;
    const size_t here = pos_;
    if (quantifier(unused_min, unused_max)) {
      pos_ = here;
      fail("a quantifier after a quantifier");
    }
    return g_.repeat(e, min, max);
  }

  // Reads * + ? {n} {n,} {n,m} at pos_ when one is there.
  bool quantifier(int64_t& min, int64_t& max) {
    if (at_end()) return false;
    const char c = peek();
    if (c == '*') {
      ++pos_, min = 0, max = -1;
    } else if (c == '+') {
      ++pos_, min = 1, max = -1;
    } else if (c == '?') {
      ++pos_, min = 0, max = 1;
    } else if (c == '{' && braces(min, max)) {
      if (max >= 0 && max < min)
        fail("quantifier {" + std::to_string(min) + "," + std::to_string(max) + "} out of order");
    } else {
      return false;
    }
    return true;
  }

  // One character of the pattern (a whole UTF-8 sequence).
  uint32_t literal_code_point() {
    if (utf8::valid_sequence_length(p_, pos_) == 0) fail("invalid UTF-8");
    return utf8::next(p_, pos_);
  }

  uint32_t hex(size_t digits) {
    if (pos_ + digits > p_.size()) fail("truncated escape");
    uint32_t v = 0;
    for (size_t i = 0; i < digits; ++i) {
      const char c = p_[pos_++];
      const int d = hex_digit_value(c);
      if (d < 0) fail("bad hex digit in escape");
      v = v << 4 | static_cast<uint32_t>(d);
    }
    return v;
  }

  // After a backslash: a class (\d ...) in `cls` and true, or one character in `cp`.
  bool escape(CharClass& cls, uint32_t& cp, bool in_class) {
    if (at_end()) fail("a trailing backslash");
    const char c = p_[pos_++];
    switch (c) {
      case 'd':
        cls = digit_class();
        return true;
      case 'w':
        cls = word_class();
        return true;
      case 's':
        cls = space_class();
        return true;
      case 'D':
        cls = complement(digit_class(), true);
        return true;
      case 'W':
        cls = complement(word_class(), true);
        return true;
      case 'S':
        cls = complement(space_class(), false);
        return true;
      case 'n':
        cp = '\n';
        return false;
      case 't':
        cp = '\t';
        return false;
      case 'r':
        cp = '\r';
        return false;
      case 'f':
        cp = '\f';
        return false;
      case 'v':
        cp = '\v';
        return false;
      case '0':
        cp = 0;
        return false;
      case 'x':
        cp = hex(2);
        return false;
      case 'u':
        cp = hex(4);
        if (cp >= 0xD800 && cp <= 0xDFFF) fail("surrogate escapes are not supported");
        return false;
      case 'b':
        if (in_class) {
          cp = '\b';
          return false;
        }
        fail("word boundaries (\\b) are not supported");
      case 'B':
        fail("word boundaries (\\B) are not supported");
      case 'p':
      case 'P':
        fail("Unicode property classes (\\p) are not supported");
      case 'k':
        fail("named backreferences are not supported");
      default:
        break;
    }
    if (c >= '1' && c <= '9') fail("backreferences are not supported");
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
      fail(std::string("the escape \\") + c + " is not supported");
    --pos_;
    cp = literal_code_point();
    return false;
  }

  void add_code_point(CharClass& cls, uint32_t cp) {
    if (cp < 0x80) {
      cls.ascii.add(static_cast<uint8_t>(cp));
    } else {
      cls.code_points.push_back(cp);
    }
  }

  void add_class(CharClass& into, const CharClass& c) {
    for (int w = 0; w < 4; ++w) into.ascii.words[w] |= c.ascii.words[w];
    into.all_non_ascii |= c.all_non_ascii;
    into.code_points.insert(into.code_points.end(), c.code_points.begin(), c.code_points.end());
  }

  CharClass bracket() {
    CharClass cls;
    bool negated = false;
    bool has_space_class = false;
    if (!at_end() && peek() == '^') {
      negated = true;
      ++pos_;
    }
    bool first = true;
    for (;;) {
      if (at_end()) fail("an unterminated character class");
      if (peek() == ']' && !first) {
        ++pos_;
        break;
      }
      first = false;
      CharClass sub;
      uint32_t lo = 0;
      if (peek() == '\\') {
        ++pos_;
        if (escape(sub, lo, true)) {
          has_space_class |= sub.ascii.has(' ') && !sub.ascii.has('a');
          add_class(cls, sub);
          continue;
        }
      } else if (peek() == '[' && pos_ + 1 < p_.size() && p_[pos_ + 1] == ':') {
        fail("POSIX classes ([:alpha:]) are not supported");
      } else {
        lo = literal_code_point();
      }
      uint32_t hi = lo;
      if (pos_ + 1 < p_.size() && peek() == '-' && p_[pos_ + 1] != ']') {
        ++pos_;
        if (peek() == '\\') {
          ++pos_;
          CharClass unused;
          if (escape(unused, hi, true)) fail("a class escape as a range end");
        } else {
          hi = literal_code_point();
        }
        if (hi < lo) fail("a character range out of order");
      }
      if (hi >= 0x80 && hi - std::max<uint32_t>(lo, 0x80) + 1 > kMaxClassCodePoints)
        fail("character ranges over more than 256 non-ASCII characters are not supported");
      for (uint32_t cp = lo; cp <= hi; ++cp) add_code_point(cls, cp);
    }
    if (!negated) return cls;
    if (!cls.code_points.empty()) fail("negated classes with non-ASCII members are not supported");
    return complement(cls, !has_space_class);
  }

  Element atom() {
    const char c = peek();
    if (c == '(') {
      ++pos_;
      if (!at_end() && peek() == '?') {
        ++pos_;
        if (at_end()) fail("an unterminated group");
        if (peek() == ':') {
          ++pos_;
        } else if (peek() == '<' && pos_ + 1 < p_.size() && p_[pos_ + 1] != '=' &&
                   p_[pos_ + 1] != '!') {
          while (!at_end() && peek() != '>') ++pos_;  // a named group: the name is dropped
          if (at_end()) fail("an unterminated group name");
          ++pos_;
        } else {
          fail("lookaround and group flags ((?=, (?!, (?<=, (?i) are not supported");
        }
      }
      // The parser recurses once per group: bounded as GBNF groups are, far below the stack.
      if (++group_depth_ > kMaxGroupDepth)
        fail("groups nested more than " + std::to_string(kMaxGroupDepth) + " deep");
      Element inner = alternation();
      --group_depth_;
      if (at_end() || peek() != ')') fail("an unterminated group");
      ++pos_;
      return inner;
    }
    if (c == '[') {
      ++pos_;
      return class_element(g_, bracket(), text_);
    }
    if (c == '.') {
      ++pos_;
      CharClass any;
      any.ascii.add_range(0, 0x7F);
      any.ascii.words[0] &= ~((uint64_t{1} << '\n') | (uint64_t{1} << '\r'));
      any.all_non_ascii = true;
      return class_element(g_, any, text_);
    }
    if (c == '^' || c == '$') fail("anchors are only supported at the pattern's ends");
    if (c == '*' || c == '+' || c == '?') fail("a quantifier with nothing before it");
    CharClass cls;
    uint32_t cp = 0;
    if (c == '\\') {
      ++pos_;
      if (escape(cls, cp, false)) return class_element(g_, cls, text_);
    } else {
      cp = literal_code_point();
    }
    add_code_point(cls, cp);
    return class_element(g_, cls, text_);
  }

  Grammar& g_;
  std::string_view p_;
  RegexText text_;
  size_t pos_ = 0;
  int group_depth_ = 0;  // groups open at pos_
};

// Whether the last character of `pattern` is an unescaped `$`.
bool ends_with_anchor(std::string_view pattern) {
  if (pattern.empty() || pattern.back() != '$') return false;
  size_t slashes = 0;
  for (size_t i = pattern.size() - 1; i > 0 && pattern[i - 1] == '\\'; --i) ++slashes;
  return slashes % 2 == 0;
}

}  // namespace

Element compile_regex(Grammar& g, std::string_view pattern, RegexText text) {
  if (!pattern.empty() && pattern.front() == '^') pattern.remove_prefix(1);
  if (ends_with_anchor(pattern)) pattern.remove_suffix(1);
  return RegexParser(g, pattern, text).parse();
}

Element compile_schema_pattern(Grammar& g, std::string_view pattern) {
  const bool from_start = !pattern.empty() && pattern.front() == '^';
  const bool to_end = ends_with_anchor(pattern);
  const Element body = compile_regex(g, pattern, RegexText::kJsonString);
  if (from_start && to_end) return body;
  CharClass any;
  any.ascii.add_range(0, 0x7F);
  any.all_non_ascii = true;
  const Element anything = g.star(class_element(g, any, RegexText::kJsonString));
  std::vector<Element> items;
  if (!from_start) items.push_back(anything);
  items.push_back(body);
  if (!to_end) items.push_back(anything);
  return g.sequence(items);
}

Grammar regex_grammar(std::string_view pattern) {
  Grammar g;
  const Element e = compile_regex(g, pattern, RegexText::kRaw);
  const int32_t root = g.new_rule("root");
  g.add_alternative(root, {e});
  g.set_root(root);
  return g;
}

Grammar choice_grammar(const std::vector<std::string>& choices) {
  if (choices.empty()) throw Error("choice: the list of choices is empty");
  Grammar g;
  const int32_t root = g.new_rule("root");
  g.add_alternative(root, {g.literal_choice(choices)});
  g.set_root(root);
  return g;
}

}  // namespace l2kv::structured
