// A byte-level context-free grammar, what every structured-output constraint (JSON schema,
// regex, choice list) compiles to. A rule is a list of alternatives; an alternative is a
// sequence of elements, each a set of bytes or a reference to a rule. Alternatives live in one
// flat array, each ended by a kEnd element, so a position in the grammar is one int32 (what
// GrammarMatcher's stacks hold). Grammars are built by the compilers in this folder and are
// never left-recursive; repetition is right recursion, which GrammarMatcher runs in constant
// stack depth.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace l2kv::structured {

// A set of byte values.
struct ByteSet {
  std::array<uint64_t, 4> words{};

  void add(uint8_t b) { words[b >> 6] |= uint64_t{1} << (b & 63); }
  void add_range(uint8_t lo, uint8_t hi) {
    for (int b = lo; b <= hi; ++b) add(static_cast<uint8_t>(b));
  }
  bool has(uint8_t b) const { return (words[b >> 6] >> (b & 63)) & 1; }
  bool empty() const { return (words[0] | words[1] | words[2] | words[3]) == 0; }
  bool operator==(const ByteSet&) const = default;
};

struct Element {
  enum class Kind : uint8_t { kEnd, kBytes, kRule };
  Kind kind = Kind::kEnd;
  int32_t index = 0;  // kBytes: into byte_sets(); kRule: the rule id
};

class Grammar {
 public:
  // Size bounds, so a short constraint cannot take gigabytes: a bounded repetition costs a rule
  // a step ({0,100000} is 100,000 rules), and a request's constraint is refused beyond these.
  static constexpr int32_t kMaxRules = 250'000;
  static constexpr int64_t kMaxElements = 4'000'000;
  // The largest count a repetition takes (repeat(); schema keywords such as maxLength).
  static constexpr int64_t kMaxRepeat = 100'000;

  // A new rule with no alternatives yet (a reference may be taken before its body exists,
  // which recursive schemas need). `name` is for messages and dumps only. This and
  // add_alternative throw l2kv::Error past kMaxRules / kMaxElements.
  int32_t new_rule(std::string name);
  void add_alternative(int32_t rule, const std::vector<Element>& sequence);
  // An element matching one byte of `set` (sets are interned).
  Element bytes(const ByteSet& set);
  static Element rule(int32_t id) { return {Element::Kind::kRule, id}; }

  // Composites, each a new rule (or a single element where one suffices).
  Element literal(std::string_view text);
  Element sequence(const std::vector<Element>& items);
  Element choice(const std::vector<std::vector<Element>>& alternatives);
  // One of `texts`, as a trie of rules that branch where the texts part (a radix tree): the
  // matcher then holds one stack per distinct next byte, not one per text, so lists of
  // thousands of values (enum, guided_choice) stay whole under its stack bound.
  Element literal_choice(std::vector<std::string> texts);
  Element optional(Element item);
  Element star(Element item);
  // `item` min to max times; max -1: no upper bound. Throws l2kv::Error above kMaxRepeat.
  Element repeat(Element item, int64_t min, int64_t max);
  // One valid UTF-8 character of two to four bytes (one shared rule).
  Element utf8_multibyte();

  void set_root(int32_t rule) { root_ = rule; }
  int32_t root() const { return root_; }

  const std::vector<Element>& elements() const { return elements_; }
  const std::vector<int32_t>& alternatives(int32_t rule) const { return rules_[rule].starts; }
  const std::string& rule_name(int32_t rule) const { return rules_[rule].name; }
  const ByteSet& byte_set(int32_t index) const { return byte_sets_[index]; }
  int32_t num_rules() const { return static_cast<int32_t>(rules_.size()); }

  // Bytes the grammar holds (what a cache of grammars counts).
  size_t memory_bytes() const;

  // Readable form, one rule a line (tests and debugging).
  std::string to_string() const;

 private:
  struct Rule {
    std::string name;
    std::vector<int32_t> starts;  // offset in elements_ of each alternative
  };
  std::vector<Rule> rules_;
  std::vector<Element> elements_;
  std::vector<ByteSet> byte_sets_;
  int32_t root_ = -1;
  int32_t utf8_multibyte_ = -1;
};

// For each rule, whether it derives some finite text (an alternative of byte sets and such
// rules). A root that does not can never complete: a schema that refers only to itself, or a
// recursion with no way out (`a ::= "x" a`).
std::vector<bool> productive_rules(const Grammar& g);

// Byte-level pieces shared by the compilers: one valid UTF-8 character whose first byte, when
// ASCII, is in `ascii` (non-ASCII characters are all allowed when `non_ascii` is set).
Element utf8_char(Grammar& g, const ByteSet& ascii, bool non_ascii);

}  // namespace l2kv::structured
