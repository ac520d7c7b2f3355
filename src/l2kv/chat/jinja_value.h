// Values of l2kv's Jinja interpreter: undefined, none, bool, int, float, string, list (or tuple:
// a list that prints and compares as Python's tuple), dict (insertion-ordered, shared like Python
// objects) and namespace (a mutable dict).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace l2kv::jinja {

// The deepest nesting of lists and dicts a value may have (from JSON or built by a template):
// printing, comparing and freeing values recurse once per level.
inline constexpr int kMaxValueDepth = 128;

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;

struct Undefined {};
struct None {};
struct ListRef {
  std::shared_ptr<List> items;
  bool is_tuple = false;  // a dict's (key, value) pairs, as Python gives them
};
struct DictRef {
  std::shared_ptr<Dict> items;
  bool is_namespace = false;
};

struct Value {
  std::variant<Undefined, None, bool, int64_t, double, std::string, ListRef, DictRef> v;

  Value() = default;
  Value(None n) : v(n) {}
  Value(bool b) : v(b) {}
  Value(int64_t i) : v(i) {}
  Value(int i) : v(static_cast<int64_t>(i)) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  static Value list(List items = {}) {
    return Value(ListRef{std::make_shared<List>(std::move(items))});
  }
  static Value tuple(List items) {
    return Value(ListRef{std::make_shared<List>(std::move(items)), true});
  }
  static Value dict(Dict items = {}, bool is_namespace = false) {
    return Value(DictRef{std::make_shared<Dict>(std::move(items)), is_namespace});
  }
  // Throws l2kv::Error for JSON nested deeper than kMaxValueDepth.
  static Value from_json(const nlohmann::ordered_json& j);

  bool is_undefined() const { return std::holds_alternative<Undefined>(v); }
  bool is_none() const { return std::holds_alternative<None>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<int64_t>(v); }
  bool is_float() const { return std::holds_alternative<double>(v); }
  bool is_number() const { return is_int() || is_float(); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_list() const { return std::holds_alternative<ListRef>(v); }
  bool is_tuple() const { return is_list() && std::get<ListRef>(v).is_tuple; }
  bool is_dict() const { return std::holds_alternative<DictRef>(v); }

  const std::string& str() const { return std::get<std::string>(v); }
  List& list_items() const { return *std::get<ListRef>(v).items; }
  Dict& dict_items() const { return *std::get<DictRef>(v).items; }
  double number() const {
    return is_int() ? static_cast<double>(std::get<int64_t>(v)) : std::get<double>(v);
  }

  bool truthy() const;
  // A key of a dict or namespace; undefined when absent or not a dict.
  Value get(const std::string& key) const;
  void set(const std::string& key, Value value) const;
  // As {{ value }} prints it: Python's str(), so lists and dicts as their repr().
  std::string to_output() const;
  // Python's repr(): strings quoted and escaped, lists and dicts of reprs.
  std::string to_repr() const;
  // As the tojson filter writes it (Python json.dumps separators, no ASCII escaping).
  std::string to_json(int indent = 0, int depth = 0) const;
  std::string type_name() const;

 private:
  explicit Value(ListRef l) : v(std::move(l)) {}
  explicit Value(DictRef d) : v(std::move(d)) {}
};

bool equal(const Value& a, const Value& b);

// Python's bool is an int where a number is wanted: True as 1, False as 0; other values as they
// are.
Value int_if_bool(const Value& v);

}  // namespace l2kv::jinja
