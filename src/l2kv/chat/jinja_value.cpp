#include "l2kv/chat/jinja_value.h"

#include <cmath>
#include <cstdio>

#include "l2kv/core/error.h"

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

std::string format_float(double d) {
  if (std::isfinite(d) && d == std::floor(d) && std::abs(d) < 1e16) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", d);
    return buf;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", d);
  return buf;
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
  return to_json();
}

std::string Value::to_json(int indent, int depth) const {
  if (is_undefined() || is_none()) return "null";
  if (is_bool()) return std::get<bool>(v) ? "true" : "false";
  if (is_int()) return std::to_string(std::get<int64_t>(v));
  if (is_float()) return format_float(std::get<double>(v));
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
  return names[v.index()];
}

bool equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) return a.number() == b.number();
  if (a.v.index() != b.v.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_bool()) return std::get<bool>(a.v) == std::get<bool>(b.v);
  if (a.is_string()) return a.str() == b.str();
  if (a.is_list()) {
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
