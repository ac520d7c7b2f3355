#include "l2kv/chat/jinja_value.h"

#include <unicode/uchar.h>

#include <charconv>
#include <cmath>
#include <cstdio>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv::jinja {
namespace {

Value from_json_at(const nlohmann::ordered_json& j, int depth) {
  // Deeper JSON (a hostile request's messages) would exhaust the stack here and in to_json.
  if (depth > kMaxValueDepth)
    throw Error("chat template: a message, tool or template argument nested deeper than " +
                std::to_string(kMaxValueDepth) + " levels");
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null:
      return Value(None{});
    case nlohmann::ordered_json::value_t::boolean:
      return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer:
    case nlohmann::ordered_json::value_t::number_unsigned:
      return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_float:
      return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string:
      return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List items;
      for (const auto& e : j) items.push_back(from_json_at(e, depth + 1));
      return Value::list(std::move(items));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict items;
      for (const auto& [k, e] : j.items()) items.emplace_back(k, from_json_at(e, depth + 1));
      return Value::dict(std::move(items));
    }
    default:
      return Value();
  }
}

}  // namespace

Value Value::from_json(const nlohmann::ordered_json& j) {
  return from_json_at(j, 0);
}

bool Value::truthy() const {
  if (is_undefined() || is_none()) return false;
  if (is_bool()) return std::get<bool>(v);
  if (is_int()) return std::get<int64_t>(v) != 0;
  if (is_float()) return std::get<double>(v) != 0.0;
  if (is_string()) return !str().empty();
  if (is_list()) return !list_items().empty();
  return !dict_items().empty();
}

Value Value::get(const std::string& key) const {
  if (!is_dict()) return Value();
  for (const auto& [k, val] : dict_items())
    if (k == key) return val;
  return Value();
}

void Value::set(const std::string& key, Value value) const {
  for (auto& [k, val] : dict_items())
    if (k == key) {
      val = std::move(value);
      return;
    }
  dict_items().emplace_back(key, std::move(value));
}

namespace {

// A finite float as Python's repr() (and so str(), and json.dumps) writes it: the shortest digits
// that read back to the same double, in positional notation while the decimal point falls within
// 16 digits of the first (with ".0" if nothing follows it), else as d.ddde+XX.
std::string python_finite_float(double d) {
  char buf[64];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  if (ec != std::errc()) throw Error("chat template: a float that cannot be printed");
  const std::string sci(buf, end);  // [-]d[.ddd]e(+|-)XX, the shortest round trip
  const size_t e = sci.find('e');
  const bool negative = sci[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e; ++i)
    if (sci[i] != '.') digits += sci[i];
  const int exponent = std::stoi(sci.substr(e + 1));
  const int point = exponent + 1;  // digits[0 .. point) come before the decimal point
  std::string out = negative ? "-" : "";
  if (point <= -4 || point > 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + exp;
  }
  if (point <= 0) return out + "0." + std::string(static_cast<size_t>(-point), '0') + digits;
  const auto whole = static_cast<size_t>(point);
  if (whole >= digits.size()) return out + digits + std::string(whole - digits.size(), '0') + ".0";
  return out + digits.substr(0, whole) + "." + digits.substr(whole);
}

// str(float) in Python.
std::string format_float(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  return python_finite_float(d);
}

// json.dumps(float) in Python.
std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return python_finite_float(d);
}

// Python's str.isprintable() for one code point: all but the control, format, surrogate,
// private-use, unassigned and separator categories, the ASCII space excepted.
bool python_printable(uint32_t cp) {
  if (cp == ' ') return true;
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

// repr(str) in Python: single quotes unless the text holds a single quote and no double one;
// backslash, that quote, \t \n \r and what is not printable escaped.
std::string python_repr(const std::string& s) {
  const bool double_quotes = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char quote = double_quotes ? '"' : '\'';
  std::string out(1, quote);
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8::valid_sequence_length(s, i);
    if (n == 0) {  // a byte that is not UTF-8 (overlong, surrogate, past U+10FFFF, cut short)
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(s[i]));
      out += buf;
      ++i;
      continue;
    }
    size_t next = i;
    const auto cp = static_cast<uint32_t>(utf8::next(s, next));
    if (cp == static_cast<uint32_t>(quote) || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (!python_printable(cp)) {
      char buf[16];
      if (cp < 0x100)
        std::snprintf(buf, sizeof buf, "\\x%02x", cp);
      else if (cp < 0x10000)
        std::snprintf(buf, sizeof buf, "\\u%04x", cp);
      else
        std::snprintf(buf, sizeof buf, "\\U%08x", cp);
      out += buf;
    } else {
      out.append(s, i, n);
    }
    i += n;
  }
  return out + quote;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

}  // namespace

std::string Value::to_output() const {
  if (is_undefined()) return "";
  if (is_none()) return "None";
  if (is_bool()) return std::get<bool>(v) ? "True" : "False";
  if (is_int()) return std::to_string(std::get<int64_t>(v));
  if (is_float()) return format_float(std::get<double>(v));
  if (is_string()) return str();
  return to_repr();
}

std::string Value::to_repr() const {
  if (is_undefined()) return "Undefined";
  if (is_string()) return python_repr(str());
  if (is_list()) {
    std::string out = is_tuple() ? "(" : "[";
    const auto& items = list_items();
    for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i].to_repr();
    if (!is_tuple()) return out + "]";
    return out + (items.size() == 1 ? ",)" : ")");
  }
  if (is_dict()) {
    std::string out = "{";
    const auto& items = dict_items();
    for (size_t i = 0; i < items.size(); ++i)
      out += (i ? ", " : "") + python_repr(items[i].first) + ": " + items[i].second.to_repr();
    out += "}";
    // Jinja's Namespace prints as its repr: <Namespace {...}>.
    return std::get<DictRef>(v).is_namespace ? "<Namespace " + out + ">" : out;
  }
  return to_output();
}

std::string Value::to_json(int indent, int depth) const {
  if (is_undefined() || is_none()) return "null";
  if (is_bool()) return std::get<bool>(v) ? "true" : "false";
  if (is_int()) return std::to_string(std::get<int64_t>(v));
  if (is_float()) return json_float(std::get<double>(v));
  if (is_string()) return json_string(str());
  const std::string pad =
      indent ? "\n" + std::string(static_cast<size_t>(indent) * (depth + 1), ' ') : "";
  const std::string end_pad =
      indent ? "\n" + std::string(static_cast<size_t>(indent) * depth, ' ') : "";
  const std::string item_sep = indent ? "," : ", ";
  std::string out;
  if (is_list()) {
    const auto& items = list_items();
    if (items.empty()) return "[]";
    out = "[";
    for (size_t i = 0; i < items.size(); ++i)
      out += (i ? item_sep : "") + pad + items[i].to_json(indent, depth + 1);
    return out + end_pad + "]";
  }
  const auto& items = dict_items();
  if (items.empty()) return "{}";
  out = "{";
  for (size_t i = 0; i < items.size(); ++i)
    out += (i ? item_sep : "") + pad + json_string(items[i].first) + ": " +
           items[i].second.to_json(indent, depth + 1);
  return out + end_pad + "}";
}

std::string Value::type_name() const {
  static const char* names[] = {"undefined", "none",   "boolean", "integer",
                                "float",     "string", "list",    "dict"};
  return is_tuple() ? "tuple" : names[v.index()];
}

Value int_if_bool(const Value& v) {
  return v.is_bool() ? Value(int64_t{std::get<bool>(v.v) ? 1 : 0}) : v;
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.number() == b.number();
  // Python's bool is an int: True == 1 and 1.0 == True.
  if ((a.is_bool() && b.is_number()) || (a.is_number() && b.is_bool()))
    return int_if_bool(a).number() == int_if_bool(b).number();
  if (a.v.index() != b.v.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_bool()) return std::get<bool>(a.v) == std::get<bool>(b.v);
  if (a.is_string()) return a.str() == b.str();
  if (a.is_list()) {
    if (a.is_tuple() != b.is_tuple()) return false;  // Python: (1, 2) != [1, 2]
    const auto &x = a.list_items(), &y = b.list_items();
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i)
      if (!equal(x[i], y[i])) return false;
    return true;
  }
  const auto &x = a.dict_items(), &y = b.dict_items();
  if (x.size() != y.size()) return false;
  for (const auto& [k, val] : x)
    if (!equal(val, b.get(k))) return false;
  return true;
}

}  // namespace l2kv::jinja
