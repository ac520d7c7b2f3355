#include "l2kv/structured/json_schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "l2kv/core/error.h"
#include "l2kv/core/hex_digit.h"
#include "l2kv/structured/regex_grammar.h"

namespace l2kv::structured {
namespace {

using json = nlohmann::ordered_json;

constexpr int64_t kMaxIntegerDigits = 15;
constexpr int64_t kMaxWhitespace = 16;
constexpr int64_t kLargestInteger = 999'999'999'999'999;  // 15 digits

// Keywords that say nothing about which values are valid.
const std::set<std::string>& annotations() {
  static const std::set<std::string> names = {
      "title",      "description", "default",   "examples", "$schema", "$id",        "$comment",
      "deprecated", "readOnly",    "writeOnly", "strict",   "$defs",   "definitions"};
  return names;
}

const std::set<std::string>& supported_keywords() {
  static const std::set<std::string> names = {"type",
                                              "properties",
                                              "required",
                                              "additionalProperties",
                                              "enum",
                                              "const",
                                              "items",
                                              "minItems",
                                              "maxItems",
                                              "anyOf",
                                              "oneOf",
                                              "allOf",
                                              "$ref",
                                              "minLength",
                                              "maxLength",
                                              "pattern",
                                              "format",
                                              "minimum",
                                              "maximum",
                                              "exclusiveMinimum",
                                              "exclusiveMaximum",
                                              "uniqueItems"};
  return names;
}

// Regexes of the formats generated (their texts are valid per ajv-formats' full mode).
const std::map<std::string, std::string>& format_patterns() {
  static const std::string date =
      "[0-9]{4}-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|"
      "02-(0[1-9]|1[0-9]|2[0-8]))";
  static const std::string time =
      "([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,6})?(Z|[+-]([01][0-9]|2[0-3]):[0-5]"
      "[0-9])";
  static const std::string octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  static const std::map<std::string, std::string> patterns = {
      {"date", date},
      {"time", time},
      {"date-time", date + "T" + time},
      {"uuid", "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"},
      {"ipv4", octet + "(\\." + octet + "){3}"},
      {"email", "[a-z0-9]{1,20}(\\.[a-z0-9]{1,20}){0,2}@([a-z0-9]{1,20}\\.){1,3}[a-z]{2,6}"},
  };
  return patterns;
}

std::string json_type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "integer";
  if (v.is_number_float())
    return std::floor(v.get<double>()) == v.get<double>() ? "integer" : "number";
  if (v.is_string()) return "string";
  if (v.is_array()) return "array";
  return "object";
}

std::string digits_of(int64_t v) {
  return std::to_string(v);
}

class SchemaCompiler {
 public:
  explicit SchemaCompiler(const json& root) : root_(root) {}

  Grammar compile_schema() {
    const int32_t root = g_.new_rule("root");
    g_.add_alternative(root, {value(root_, "#")});
    g_.set_root(root);
    return std::move(g_);
  }

  Grammar compile_any_object() {
    const int32_t root = g_.new_rule("root");
    g_.add_alternative(root, {free_object(any_value())});
    g_.set_root(root);
    return std::move(g_);
  }

 private:
  [[noreturn]] void fail(const std::string& path, const std::string& what) const {
    throw Error("JSON schema at " + path + ": " + what);
  }

  Element ws() {
    if (ws_.kind == Element::Kind::kEnd) {
      ByteSet s;
      for (char c : {' ', '\t', '\n'}) s.add(static_cast<uint8_t>(c));
      ws_ = g_.repeat(g_.bytes(s), 0, kMaxWhitespace);
    }
    return ws_;
  }

  Element lit(const std::string& text) { return g_.literal(text); }

  // One character of a JSON string: unescaped (not " \ or a control character), or an
  // escape; \u escapes stay outside the surrogates so every string is valid Unicode.
  Element string_char() {
    if (string_char_.kind != Element::Kind::kEnd) return string_char_;
    ByteSet plain;
    plain.add_range(0x20, 0x7F);
    plain.words[0] &= ~(uint64_t{1} << '"');
    plain.words[1] &= ~(uint64_t{1} << ('\\' - 64));
    ByteSet simple;
    for (char c : {'"', '\\', '/', 'b', 'f', 'n', 'r', 't'}) simple.add(static_cast<uint8_t>(c));
    ByteSet hex;
    hex.add_range('0', '9');
    hex.add_range('a', 'f');
    hex.add_range('A', 'F');
    ByteSet first;  // 0-9 A-C E-F: not D
    first.add_range('0', '9');
    first.add_range('a', 'c');
    first.add_range('A', 'C');
    first.add_range('e', 'f');
    first.add_range('E', 'F');
    ByteSet d;
    d.add('d');
    d.add('D');
    ByteSet low;
    low.add_range('0', '7');
    const Element h = g_.bytes(hex);
    const Element unicode =
        g_.choice({{g_.bytes(first), h, h, h}, {g_.bytes(d), g_.bytes(low), h, h}});
    const Element escape = g_.choice({{g_.bytes(simple)}, {lit("u"), unicode}});
    string_char_ = g_.choice({{g_.bytes(plain)}, {g_.utf8_multibyte()}, {lit("\\"), escape}});
    return string_char_;
  }

  Element quoted(Element content) { return g_.sequence({lit("\""), content, lit("\"")}); }

  Element any_string() {
    if (any_string_.kind == Element::Kind::kEnd) any_string_ = quoted(g_.star(string_char()));
    return any_string_;
  }

  // [1-9] followed by up to `max_more` digits.
  Element natural(int64_t max_more) {
    ByteSet nz, digit;
    nz.add_range('1', '9');
    digit.add_range('0', '9');
    return g_.sequence({g_.bytes(nz), g_.repeat(g_.bytes(digit), 0, max_more)});
  }

  Element any_integer() {
    return g_.choice({{lit("0")}, {g_.optional(lit("-")), natural(kMaxIntegerDigits - 1)}});
  }

  Element any_number() {
    ByteSet digit, e, sign;
    digit.add_range('0', '9');
    e.add('e');
    e.add('E');
    sign.add('+');
    sign.add('-');
    const Element integer_part = g_.sequence(
        {g_.optional(lit("-")), g_.choice({{lit("0")}, {natural(kMaxIntegerDigits - 1)}})});
    const Element fraction = g_.sequence({lit("."), g_.repeat(g_.bytes(digit), 1, 15)});
    const Element exponent =
        g_.sequence({g_.bytes(e), g_.optional(g_.bytes(sign)), g_.repeat(g_.bytes(digit), 1, 2)});
    return g_.sequence({integer_part, g_.optional(fraction), g_.optional(exponent)});
  }

  // Digit strings of equal length from `a` to `b` (a <= b), leading zeros kept.
  std::vector<std::vector<Element>> same_length_range(const std::string& a, const std::string& b) {
    if (a.empty()) return {{}};
    ByteSet any_digit;
    any_digit.add_range('0', '9');
    const std::string rest_a = a.substr(1), rest_b = b.substr(1);
    const bool low_open = rest_a.find_first_not_of('0') == std::string::npos;
    const bool high_open = rest_b.find_first_not_of('9') == std::string::npos;
    auto digit_set = [&](char lo, char hi) {
      ByteSet s;
      s.add_range(static_cast<uint8_t>(lo), static_cast<uint8_t>(hi));
      return g_.bytes(s);
    };
    auto fixed_tail = [&](size_t n) { return g_.repeat(g_.bytes(any_digit), n, n); };
    std::vector<std::vector<Element>> alts;
    if (a[0] == b[0]) {
      for (auto& alt : same_length_range(rest_a, rest_b)) {
        alt.insert(alt.begin(), digit_set(a[0], a[0]));
        alts.push_back(std::move(alt));
      }
      return alts;
    }
    if (low_open && high_open) return {{digit_set(a[0], b[0]), fixed_tail(rest_a.size())}};
    char mid_lo = a[0], mid_hi = b[0];
    if (!low_open) {
      ++mid_lo;
      for (auto& alt : same_length_range(rest_a, std::string(rest_a.size(), '9'))) {
        alt.insert(alt.begin(), digit_set(a[0], a[0]));
        alts.push_back(std::move(alt));
      }
    }
    if (!high_open) {
      --mid_hi;
      for (auto& alt : same_length_range(std::string(rest_b.size(), '0'), rest_b)) {
        alt.insert(alt.begin(), digit_set(b[0], b[0]));
        alts.push_back(std::move(alt));
      }
    }
    if (mid_lo <= mid_hi) alts.push_back({digit_set(mid_lo, mid_hi), fixed_tail(rest_a.size())});
    return alts;
  }

  // Positive integers in [a, b], 1 <= a <= b, without leading zeros.
  void natural_range(int64_t a, int64_t b, std::vector<std::vector<Element>>& alts,
                     const std::vector<Element>& prefix) {
    for (size_t n = digits_of(a).size(); n <= digits_of(b).size(); ++n) {
      int64_t low = 1;
      for (size_t i = 1; i < n; ++i) low *= 10;
      const int64_t high = low * 10 - 1;
      const int64_t lo = std::max(a, low), hi = std::min(b, high);
      if (lo > hi) continue;
      for (auto& alt : same_length_range(digits_of(lo), digits_of(hi))) {
        alt.insert(alt.begin(), prefix.begin(), prefix.end());
        alts.push_back(std::move(alt));
      }
    }
  }

  Element integer_range(int64_t lo, int64_t hi) {
    std::vector<std::vector<Element>> alts;
    if (lo <= 0 && hi >= 0) alts.push_back({lit("0")});
    if (hi >= 1) natural_range(std::max<int64_t>(lo, 1), hi, alts, {});
    if (lo <= -1) natural_range(std::max<int64_t>(1, -hi), -lo, alts, {lit("-")});
    return g_.choice(alts);
  }

  std::optional<double> number_field(const json& s, const char* name, const std::string& path) {
    const auto it = s.find(name);
    if (it == s.end()) return std::nullopt;
    if (it->is_boolean())
      fail(path, std::string("'") + name + "' as a boolean (draft 4) is not supported");
    if (!it->is_number()) fail(path, std::string("'") + name + "' must be a number");
    return it->get<double>();
  }

  std::optional<int64_t> count_field(const json& s, const char* name, const std::string& path) {
    const auto it = s.find(name);
    if (it == s.end()) return std::nullopt;
    // JSON Schema counts any number with a zero fraction as an integer (5.0 is 5). Counts
    // past Grammar::kMaxRepeat are refused, so a double holds every one taken exactly.
    const double count = it->is_number() ? it->get<double>() : -1;
    if (!(count >= 0) || count != std::floor(count))
      fail(path, std::string("'") + name + "' must be a non-negative integer, got " +
                     it->dump().substr(0, 32));
    if (count > static_cast<double>(Grammar::kMaxRepeat))
      fail(path, std::string("'") + name + "' of " + it->dump().substr(0, 32) + " is above " +
                     std::to_string(Grammar::kMaxRepeat) +
                     ", the largest count l2kv's grammars take");
    return static_cast<int64_t>(count);
  }

  // Integers, or numbers with bounds (written as integers in the range).
  Element bounded_integer(const json& s, const std::string& path, bool number) {
    const auto min = number_field(s, "minimum", path), max = number_field(s, "maximum", path);
    const auto xmin = number_field(s, "exclusiveMinimum", path);
    const auto xmax = number_field(s, "exclusiveMaximum", path);
    if (!min && !max && !xmin && !xmax) return number ? any_number() : any_integer();
    double lo = -static_cast<double>(kLargestInteger), hi = static_cast<double>(kLargestInteger);
    if (min) lo = std::max(lo, std::ceil(*min));
    if (xmin) lo = std::max(lo, std::floor(*xmin) + 1);
    if (max) hi = std::min(hi, std::floor(*max));
    if (xmax) hi = std::min(hi, std::ceil(*xmax) - 1);
    if (lo > hi)
      fail(path, number ? "no integer lies within the bounds (numbers with bounds are written "
                          "as integers)"
                        : "no integer lies within the bounds");
    return integer_range(static_cast<int64_t>(lo), static_cast<int64_t>(hi));
  }

  Element string_schema(const json& s, const std::string& path) {
    const auto min = count_field(s, "minLength", path), max = count_field(s, "maxLength", path);
    const bool has_pattern = s.contains("pattern"), has_format = s.contains("format");
    if ((has_pattern || has_format) && (min || max))
      fail(path, std::string("'") + (has_pattern ? "pattern" : "format") +
                     "' together with minLength/maxLength is not supported");
    if (has_pattern && has_format) fail(path, "'pattern' together with 'format' is not supported");
    try {
      if (has_format) {
        if (!s["format"].is_string()) fail(path, "'format' must be a string");
        const std::string format = s["format"].get<std::string>();
        const auto it = format_patterns().find(format);
        if (it == format_patterns().end())
          fail(path, "unsupported keyword 'format' value '" + format +
                         "' (supported: date, time, date-time, uuid, ipv4, email)");
        return quoted(compile_regex(g_, it->second, RegexText::kJsonString));
      }
      if (has_pattern) {
        if (!s["pattern"].is_string()) fail(path, "'pattern' must be a string");
        return quoted(compile_schema_pattern(g_, s["pattern"].get<std::string>()));
      }
    } catch (const Error& e) {
      const std::string what = e.what();
      if (what.starts_with("JSON schema at")) throw;
      fail(path, "'pattern': " + what);
    }
    if (!min && !max) return any_string();
    if (min && max && *max < *min) fail(path, "maxLength is below minLength");
    return quoted(g_.repeat(string_char(), min.value_or(0), max ? *max : -1));
  }

  Element array_schema(const json& s, const std::string& path) {
    const int64_t min = count_field(s, "minItems", path).value_or(0);
    const int64_t max = count_field(s, "maxItems", path).value_or(-1);
    if (max >= 0 && max < min) fail(path, "maxItems is below minItems");
    if (s.contains("uniqueItems") && s["uniqueItems"] != false)
      fail(path, "unsupported keyword 'uniqueItems'");
    Element item{};
    const auto items = s.find("items");
    if (items == s.end() || *items == true) {
      item = any_value();
    } else if (*items == false) {
      if (min > 0) fail(path, "'items': false with minItems above 0 allows nothing");
      return g_.sequence({lit("["), ws(), lit("]")});
    } else {
      item = value(*items, path + "/items");
    }
    if (max == 0) return g_.sequence({lit("["), ws(), lit("]")});
    const Element more = g_.sequence({ws(), lit(","), ws(), item});
    Element body =
        g_.sequence({item, g_.repeat(more, std::max<int64_t>(min - 1, 0), max < 0 ? -1 : max - 1)});
    if (min == 0) body = g_.optional(body);
    return g_.sequence({lit("["), ws(), body, ws(), lit("]")});
  }

  // {"key": value, ...} with any string keys and values from `item`.
  Element free_object(Element item) {
    const Element member = g_.sequence({any_string(), ws(), lit(":"), ws(), item});
    const Element more = g_.sequence({ws(), lit(","), ws(), member});
    const Element body = g_.optional(g_.sequence({member, g_.star(more)}));
    return g_.sequence({lit("{"), ws(), body, ws(), lit("}")});
  }

  Element object_schema(const json& s, const std::string& path) {
    std::vector<std::string> required;
    if (const auto it = s.find("required"); it != s.end()) {
      if (!it->is_array()) fail(path, "'required' must be a list of names");
      for (const json& name : *it) {
        if (!name.is_string()) fail(path, "'required' must be a list of names");
        required.push_back(name.get<std::string>());
      }
    }
    const auto props = s.find("properties");
    const auto extra = s.find("additionalProperties");
    if (props == s.end()) {
      if (!required.empty())
        fail(path, "'required' names properties, but the object has no 'properties'");
      if (extra != s.end() && *extra == false) return g_.sequence({lit("{"), ws(), lit("}")});
      if (extra == s.end() || *extra == true) return free_object(any_value());
      return free_object(value(*extra, path + "/additionalProperties"));
    }
    if (!props->is_object()) fail(path, "'properties' must be an object");
    if (extra != s.end() && !extra->is_boolean() && !extra->is_object())
      fail(path, "'additionalProperties' must be a boolean or a schema");
    for (const std::string& name : required)
      if (!props->contains(name))
        fail(path, "required property '" + name + "' is not in 'properties'");
    // after_first[i] / after_rest[i]: properties i.. when none (or some) came before.
    const size_t n = props->size();
    std::vector<Element> after_first(n + 1), after_rest(n + 1);
    std::vector<std::pair<std::string, const json*>> list;
    for (const auto& [name, schema] : props->items()) list.emplace_back(name, &schema);
    for (size_t i = n; i-- > 0;) {
      const auto& [name, schema] = list[i];
      const bool is_required = std::find(required.begin(), required.end(), name) != required.end();
      const Element kv = g_.sequence({lit(json(name).dump()), ws(), lit(":"), ws(),
                                      value(*schema, path + "/properties/" + name)});
      const int32_t rest = g_.new_rule("props_rest");
      g_.add_alternative(rest, {ws(), lit(","), ws(), kv, after_rest[i + 1]});
      if (!is_required) g_.add_alternative(rest, {after_rest[i + 1]});
      const int32_t first = g_.new_rule("props_first");
      g_.add_alternative(first, {kv, after_rest[i + 1]});
      if (!is_required) g_.add_alternative(first, {after_first[i + 1]});
      after_rest[i] = Grammar::rule(rest);
      after_first[i] = Grammar::rule(first);
    }
    return g_.sequence({lit("{"), ws(), after_first[0], ws(), lit("}")});
  }

  Element any_value() {
    if (any_value_ >= 0) return Grammar::rule(any_value_);
    any_value_ = g_.new_rule("value");
    const Element v = Grammar::rule(any_value_);
    const Element more = g_.sequence({ws(), lit(","), ws(), v});
    const Element array =
        g_.sequence({lit("["), ws(), g_.optional(g_.sequence({v, g_.star(more)})), ws(), lit("]")});
    for (const Element& e : {free_object(v), array, any_string(), any_number(), lit("true"),
                             lit("false"), lit("null")})
      g_.add_alternative(any_value_, {e});
    return v;
  }

  Element typed(const json& s, const std::string& type, const std::string& path) {
    if (type == "string") return string_schema(s, path);
    if (type == "integer") return bounded_integer(s, path, false);
    if (type == "number") return bounded_integer(s, path, true);
    if (type == "boolean") return g_.choice({{lit("true")}, {lit("false")}});
    if (type == "null") return lit("null");
    if (type == "object") return object_schema(s, path);
    if (type == "array") return array_schema(s, path);
    fail(path, "unknown type '" + type + "'");
  }

  // The JSON pointer `ref` ("#", "#/$defs/Name", ...) in the root schema.
  Element reference(const std::string& ref, const std::string& path) {
    if (ref.empty() || ref[0] != '#')
      fail(path, "'$ref' '" + ref + "': only references within the schema (#/...) are supported");
    // A URI fragment: percent-decoded first, then read as a JSON pointer (RFC 6901, 6).
    std::string pointer;
    for (size_t k = 1; k < ref.size(); ++k) {
      if (ref[k] != '%') {
        pointer.push_back(ref[k]);
        continue;
      }
      const int hi = k + 2 < ref.size() ? hex_digit_value(ref[k + 1]) : -1;
      const int lo = k + 2 < ref.size() ? hex_digit_value(ref[k + 2]) : -1;
      if (hi < 0 || lo < 0)
        fail(path, "'$ref' '" + ref + "' has a '%' not followed by two hex digits");
      pointer.push_back(static_cast<char>(hi * 16 + lo));
      k += 2;
    }
    const json* target = &root_;
    size_t pos = 0;
    while (pos < pointer.size()) {
      if (pointer[pos] != '/') fail(path, "'$ref' '" + ref + "' is not a JSON pointer");
      const size_t end = std::min(pointer.find('/', pos + 1), pointer.size());
      std::string token;  // ~1 is '/', ~0 is '~'
      for (size_t k = pos + 1; k < end; ++k) {
        if (pointer[k] == '~' && k + 1 < end && (pointer[k + 1] == '0' || pointer[k + 1] == '1')) {
          token.push_back(pointer[++k] == '1' ? '/' : '~');
        } else {
          token.push_back(pointer[k]);
        }
      }
      if (target->is_array()) {  // an index: digits, no leading zero
        const bool digits =
            !token.empty() && token.size() <= 9 &&
            std::all_of(token.begin(), token.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
            (token == "0" || token[0] != '0');
        if (!digits || std::stoul(token) >= target->size())
          fail(path, "'$ref' '" + ref + "' does not resolve: '" + token +
                         "' is not an index of a list of " + std::to_string(target->size()));
        target = &(*target)[std::stoul(token)];
      } else {
        if (!target->is_object() || !target->contains(token))
          fail(path, "'$ref' '" + ref + "' does not resolve");
        target = &(*target)[token];
      }
      pos = end;
    }
    // One rule per subschema, however it is spelled (#/$defs/a, #/$defs/%61).
    if (const auto it = refs_.find(target); it != refs_.end()) return Grammar::rule(it->second);
    const int32_t r = g_.new_rule("ref " + ref);
    refs_.emplace(target, r);  // before the body, for recursive schemas
    g_.add_alternative(r, {value(*target, ref)});
    return Grammar::rule(r);
  }

  // Keys of `s` other than annotations and those in `allowed`.
  std::vector<std::string> other_keys(const json& s, std::initializer_list<const char*> allowed) {
    std::vector<std::string> out;
    for (const auto& [key, v] : s.items()) {
      if (annotations().contains(key)) continue;
      const std::string& name = key;  // a structured binding cannot be captured (C++20)
      if (std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return name == a; }))
        continue;
      out.push_back(key);
    }
    return out;
  }

  Element value(const json& s, const std::string& path) {
    if (++depth_ > kMaxSchemaDepth)
      fail(path, "the schema nests too deeply: more than " + std::to_string(kMaxSchemaDepth) +
                     " levels of subschemas, counting each '$ref' followed");
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    if (s.is_boolean()) {
      if (s.get<bool>()) return any_value();
      fail(path, "the schema false allows nothing");
    }
    if (!s.is_object()) fail(path, "a schema must be an object or a boolean");
    for (const auto& [key, v] : s.items())
      if (!annotations().contains(key) && !supported_keywords().contains(key))
        fail(path, "unsupported keyword '" + key + "'");

    if (const auto it = s.find("$ref"); it != s.end()) {
      if (!it->is_string()) fail(path, "'$ref' must be a string");
      if (const auto others = other_keys(s, {"$ref"}); !others.empty())
        fail(path, "'$ref' alongside '" + others[0] + "' is not supported");
      return reference(it->get<std::string>(), path);
    }
    for (const char* combinator : {"anyOf", "oneOf", "allOf"}) {
      const auto it = s.find(combinator);
      if (it == s.end()) continue;
      if (const auto others = other_keys(s, {combinator}); !others.empty())
        fail(path,
             std::string("'") + combinator + "' alongside '" + others[0] + "' is not supported");
      if (!it->is_array() || it->empty())
        fail(path, std::string("'") + combinator + "' must be a non-empty list of schemas");
      if (std::string(combinator) == "allOf") {
        if (it->size() != 1) fail(path, "'allOf' with more than one schema is not supported");
        return value((*it)[0], path + "/allOf/0");
      }
      std::vector<std::vector<Element>> alts;
      for (size_t i = 0; i < it->size(); ++i)
        alts.push_back({value((*it)[i], path + "/" + combinator + "/" + std::to_string(i))});
      return g_.choice(alts);
    }

    std::vector<std::string> types;
    if (const auto it = s.find("type"); it != s.end()) {
      if (it->is_string()) {
        types.push_back(it->get<std::string>());
      } else if (it->is_array() && !it->empty()) {
        for (const json& t : *it) {
          if (!t.is_string()) fail(path, "'type' must be a string or a list of strings");
          types.push_back(t.get<std::string>());
        }
      } else {
        fail(path, "'type' must be a string or a list of strings");
      }
    }
    auto type_ok = [&](const json& v) {
      if (types.empty()) return true;
      const std::string t = json_type_name(v);
      for (const std::string& want : types)
        if (want == t || (want == "number" && t == "integer")) return true;
      return false;
    };
    auto text_of = [&](const json& v) {
      try {
        return v.dump();
      } catch (const json::exception&) {
        fail(path, "a value that is not valid UTF-8");
      }
    };
    if (const auto it = s.find("const"); it != s.end()) {
      if (const auto others = other_keys(s, {"const", "type"}); !others.empty())
        fail(path, "'const' alongside '" + others[0] + "' is not supported");
      if (!type_ok(*it)) fail(path, "'const' is not of the schema's type");
      return lit(text_of(*it));
    }
    if (const auto it = s.find("enum"); it != s.end()) {
      if (const auto others = other_keys(s, {"enum", "type"}); !others.empty())
        fail(path, "'enum' alongside '" + others[0] + "' is not supported");
      if (!it->is_array()) fail(path, "'enum' must be a list");
      std::vector<std::string> values;
      for (const json& v : *it)
        if (type_ok(v)) values.push_back(text_of(v));
      if (values.empty()) fail(path, "no value of 'enum' is of the schema's type");
      return g_.literal_choice(std::move(values));
    }

    if (types.empty()) {
      auto has = [&](std::initializer_list<const char*> keys) {
        return std::any_of(keys.begin(), keys.end(), [&](const char* k) { return s.contains(k); });
      };
      if (has({"properties", "additionalProperties", "required"}))
        types.push_back("object");
      else if (has({"items", "minItems", "maxItems"}))
        types.push_back("array");
      else if (has({"minLength", "maxLength", "pattern", "format"}))
        types.push_back("string");
      else if (has({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}))
        types.push_back("number");
      else
        return any_value();
    }
    if (types.size() == 1) return typed(s, types[0], path);
    std::vector<std::vector<Element>> alts;
    for (const std::string& t : types) alts.push_back({typed(s, t, path)});
    return g_.choice(alts);
  }

  static constexpr int kMaxSchemaDepth = 128;

  Grammar g_;
  const json& root_;
  std::map<const json*, int32_t> refs_;  // subschemas of root_ reached by a $ref
  int32_t any_value_ = -1;
  int depth_ = 0;
  Element ws_{}, string_char_{}, any_string_{};
};

}  // namespace

Grammar json_object_grammar() {
  static const json empty = json::object();
  return SchemaCompiler(empty).compile_any_object();
}

Grammar json_schema_grammar(const nlohmann::ordered_json& schema) {
  return SchemaCompiler(schema).compile_schema();
}

}  // namespace l2kv::structured
