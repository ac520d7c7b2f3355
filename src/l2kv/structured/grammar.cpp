#include "l2kv/structured/grammar.h"

#include <algorithm>
#include <sstream>

#include "l2kv/core/error.h"

namespace l2kv::structured {
namespace {

ByteSet range(uint8_t lo, uint8_t hi) {
  ByteSet s;
  s.add_range(lo, hi);
  return s;
}

}  // namespace

int32_t Grammar::new_rule(std::string name) {
  if (std::ssize(rules_) >= kMaxRules)
    throw Error("the constraint needs a grammar of more than " + std::to_string(kMaxRules) +
                " rules (each step of a bounded repetition, such as maxLength or {0,n}, is one)");
  rules_.push_back({std::move(name), {}});
  return static_cast<int32_t>(rules_.size()) - 1;
}

void Grammar::add_alternative(int32_t rule, const std::vector<Element>& sequence) {
  if (std::ssize(elements_) + std::ssize(sequence) + 1 > kMaxElements)
    throw Error("the constraint needs a grammar of more than " + std::to_string(kMaxElements) +
                " elements");
  rules_[rule].starts.push_back(static_cast<int32_t>(elements_.size()));
  for (const Element& e : sequence)
    if (e.kind != Element::Kind::kEnd) elements_.push_back(e);
  elements_.push_back({Element::Kind::kEnd, 0});
}

Element Grammar::bytes(const ByteSet& set) {
  for (size_t i = 0; i < byte_sets_.size(); ++i)
    if (byte_sets_[i] == set) return {Element::Kind::kBytes, static_cast<int32_t>(i)};
  byte_sets_.push_back(set);
  return {Element::Kind::kBytes, static_cast<int32_t>(byte_sets_.size()) - 1};
}

Element Grammar::literal(std::string_view text) {
  std::vector<Element> items;
  for (char c : text) {
    ByteSet s;
    s.add(static_cast<uint8_t>(c));
    items.push_back(bytes(s));
  }
  if (items.size() == 1) return items[0];
  return sequence(items);
}

Element Grammar::sequence(const std::vector<Element>& items) {
  const int32_t r = new_rule("seq");
  add_alternative(r, items);
  return rule(r);
}

Element Grammar::choice(const std::vector<std::vector<Element>>& alternatives) {
  const int32_t r = new_rule("choice");
  for (const auto& a : alternatives) add_alternative(r, a);
  return rule(r);
}

Element Grammar::literal_choice(std::vector<std::string> texts) {
  std::sort(texts.begin(), texts.end());
  texts.erase(std::unique(texts.begin(), texts.end()), texts.end());
  if (texts.empty()) throw Error("a choice of no values");
  // The rule of texts[lo, hi), which share their first `depth` bytes: an empty alternative when
  // one of them ends there (sorted first), then one alternative per next byte: the bytes its
  // texts share, and the rule of what follows where they part.
  const auto node = [&](auto&& self, size_t lo, size_t hi, size_t depth) -> int32_t {
    const int32_t r = new_rule("choice");
    size_t i = lo;
    if (texts[i].size() == depth) {
      add_alternative(r, {});
      ++i;
    }
    while (i < hi) {
      size_t j = i + 1;
      while (j < hi && texts[j][depth] == texts[i][depth]) ++j;
      // Sorted, so the group's common prefix is that of its first and last texts.
      const std::string& first = texts[i];
      const std::string& last = texts[j - 1];
      size_t shared = depth + 1;
      while (shared < first.size() && shared < last.size() && first[shared] == last[shared])
        ++shared;
      std::vector<Element> items;
      for (size_t k = depth; k < shared; ++k) {
        ByteSet b;
        b.add(static_cast<uint8_t>(first[k]));
        items.push_back(bytes(b));
      }
      if (j - i > 1 || first.size() > shared) items.push_back(rule(self(self, i, j, shared)));
      add_alternative(r, items);
      i = j;
    }
    return r;
  };
  return rule(node(node, 0, texts.size(), 0));
}

Element Grammar::optional(Element item) {
  return choice({{item}, {}});
}

Element Grammar::star(Element item) {
  // r -> item r | empty: the reference to r ends its alternative, so repeating never deepens
  // the matcher's stack.
  const int32_t r = new_rule("star");
  add_alternative(r, {item, rule(r)});
  add_alternative(r, {});
  return rule(r);
}

Element Grammar::repeat(Element item, int64_t min, int64_t max) {
  if (min < 0 || (max >= 0 && max < min))
    throw Error("repetition bounds [" + std::to_string(min) + ", " + std::to_string(max) +
                "] are empty");
  if (min > kMaxRepeat || max > kMaxRepeat)
    throw Error("repetition bound " + std::to_string(std::max(min, max)) + " is above " +
                std::to_string(kMaxRepeat));
  // The optional tail first: t_k -> item t_{k-1} | empty, k = max - min.
  Element tail{Element::Kind::kEnd, 0};
  if (max < 0) {
    tail = star(item);
  } else {
    for (int64_t k = 0; k < max - min; ++k) {
      const int32_t r = new_rule("upto");
      if (tail.kind == Element::Kind::kEnd)
        add_alternative(r, {item});
      else
        add_alternative(r, {item, tail});
      add_alternative(r, {});
      tail = rule(r);
    }
  }
  std::vector<Element> items(static_cast<size_t>(min), item);
  if (tail.kind != Element::Kind::kEnd) items.push_back(tail);
  if (items.size() == 1) return items[0];
  return sequence(items);
}

size_t Grammar::memory_bytes() const {
  size_t bytes = rules_.capacity() * sizeof(Rule) + elements_.capacity() * sizeof(Element) +
                 byte_sets_.capacity() * sizeof(ByteSet);
  // Each rule's list of alternatives is a heap block of its own (16 bytes of allocator overhead).
  for (const Rule& r : rules_)
    bytes += r.starts.capacity() * sizeof(int32_t) + 16 +
             (r.name.capacity() > 15 ? r.name.capacity() : 0);
  return bytes;
}

Element Grammar::utf8_multibyte() {
  if (utf8_multibyte_ >= 0) return rule(utf8_multibyte_);
  const int32_t r = new_rule("utf8_multibyte");
  const Element cont = bytes(range(0x80, 0xBF));
  ByteSet e1 = range(0xE1, 0xEC);
  e1.add(0xEE);
  e1.add(0xEF);
  add_alternative(r, {bytes(range(0xC2, 0xDF)), cont});
  add_alternative(r, {bytes(range(0xE0, 0xE0)), bytes(range(0xA0, 0xBF)), cont});
  add_alternative(r, {bytes(e1), cont, cont});
  add_alternative(r, {bytes(range(0xED, 0xED)), bytes(range(0x80, 0x9F)), cont});
  add_alternative(r, {bytes(range(0xF0, 0xF0)), bytes(range(0x90, 0xBF)), cont, cont});
  add_alternative(r, {bytes(range(0xF1, 0xF3)), cont, cont, cont});
  add_alternative(r, {bytes(range(0xF4, 0xF4)), bytes(range(0x80, 0x8F)), cont, cont});
  utf8_multibyte_ = r;
  return rule(r);
}

Element utf8_char(Grammar& g, const ByteSet& ascii, bool non_ascii) {
  if (!non_ascii) return g.bytes(ascii);
  if (ascii.empty()) return g.utf8_multibyte();
  return g.choice({{g.bytes(ascii)}, {g.utf8_multibyte()}});
}

std::string Grammar::to_string() const {
  std::ostringstream out;
  auto set_text = [&](const ByteSet& s) {
    std::string text = "[";
    for (int b = 0; b < 256; ++b) {
      if (!s.has(static_cast<uint8_t>(b))) continue;
      int e = b;
      while (e + 1 < 256 && s.has(static_cast<uint8_t>(e + 1))) ++e;
      auto one = [](int c) {
        if (c > 0x20 && c < 0x7F && c != ']' && c != '\\' && c != '-')
          return std::string(1, static_cast<char>(c));
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\x%02X", c);
        return std::string(buf);
      };
      text += one(b);
      if (e > b) {
        text += '-';
        text += one(e);
      }
      b = e;
    }
    return text + "]";
  };
  for (size_t r = 0; r < rules_.size(); ++r) {
    out << r << " " << rules_[r].name << " ::=";
    for (size_t a = 0; a < rules_[r].starts.size(); ++a) {
      out << (a ? " |" : "");
      for (int32_t p = rules_[r].starts[a]; elements_[p].kind != Element::Kind::kEnd; ++p) {
        const Element& e = elements_[p];
        if (e.kind == Element::Kind::kBytes)
          out << " " << set_text(byte_sets_[e.index]);
        else
          out << " <" << e.index << ">";
      }
    }
    out << "\n";
  }
  return out.str();
}

std::vector<bool> productive_rules(const Grammar& g) {
  std::vector<bool> productive(static_cast<size_t>(g.num_rules()), false);
  const auto& elements = g.elements();
  // Fixed point: a rule becomes productive once one of its alternatives is all byte sets and
  // productive rules. At most one pass per rule.
  for (bool changed = true; changed;) {
    changed = false;
    for (int32_t r = 0; r < g.num_rules(); ++r) {
      if (productive[static_cast<size_t>(r)]) continue;
      for (const int32_t start : g.alternatives(r)) {
        bool all = true;
        for (int32_t e = start; elements[e].kind != Element::Kind::kEnd; ++e)
          if (elements[e].kind == Element::Kind::kRule &&
              !productive[static_cast<size_t>(elements[e].index)]) {
            all = false;
            break;
          }
        if (all) {
          productive[static_cast<size_t>(r)] = changed = true;
          break;
        }
      }
    }
  }
  return productive;
}

}  // namespace l2kv::structured
