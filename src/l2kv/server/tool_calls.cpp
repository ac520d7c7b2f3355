#include "l2kv/server/tool_calls.h"

#include "l2kv/core/error.h"

namespace l2kv::server {
namespace {

using json = nlohmann::ordered_json;

constexpr const char* kHermesOpen = "<tool_call>";
constexpr const char* kHermesClose = "</tool_call>";
constexpr const char* kMistralMarker = "[TOOL_CALLS]";
constexpr const char* kPythonTag = "<|python_tag|>";
constexpr const char* kThinkEnd = "</think>";

// Where the parse starts: after the last </think> (reasoning is never a call).
size_t parse_start(const std::string& text) {
  const size_t end = text.rfind(kThinkEnd);
  return end == std::string::npos ? 0 : end + std::string(kThinkEnd).size();
}

size_t skip_space(const std::string& text, size_t pos) {
  while (pos < text.size() &&
         (text[pos] == ' ' || text[pos] == '\n' || text[pos] == '\t' || text[pos] == '\r'))
    ++pos;
  return pos;
}

// The end (one past) of the JSON object or array opening at `pos`, strings respected; npos if
// it does not close.
size_t json_value_end(const std::string& text, size_t pos) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = pos; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      ++depth;
    } else if (c == '}' || c == ']') {
      if (--depth == 0) return i + 1;
    }
  }
  return std::string::npos;
}

// {"name": ..., <args_key>: {...} or "..."} as a call; nullopt when it is not one.
std::optional<ToolCall> call_of(const json& v, std::initializer_list<const char*> args_keys) {
  if (!v.is_object() || !v.contains("name") || !v["name"].is_string()) return std::nullopt;
  ToolCall call{v["name"].get<std::string>(), "{}"};
  for (const char* key : args_keys) {
    if (!v.contains(key)) continue;
    const json& a = v[key];
    if (a.is_object()) {
      call.arguments = a.dump();
    } else if (a.is_string()) {
      call.arguments = a.get<std::string>();
    } else {
      return std::nullopt;
    }
    return call;
  }
  return call;
}

std::optional<json> parse_json(const std::string& text) {
  try {
    return json::parse(text);
  } catch (const json::exception&) {
    return std::nullopt;
  }
}

std::optional<std::string> content_or_null(std::string text) {
  while (!text.empty() && (text.back() == ' ' || text.back() == '\n' || text.back() == '\t'))
    text.pop_back();
  if (text.empty()) return std::nullopt;
  return text;
}

// Where the calls begin in `text` for `parser` (npos: none yet); a marker cut at the end of
// the text counts when `partial` is set (streaming holds it back).
size_t calls_begin(ToolCallParser parser, const std::string& text, bool partial) {
  const size_t from = parse_start(text);
  auto marker = [&](const std::string& m) {
    const size_t pos = text.find(m, from);
    if (pos != std::string::npos || !partial) return pos;
    for (size_t k = std::min(m.size() - 1, text.size() - from); k > 0; --k)
      if (text.compare(text.size() - k, k, m, 0, k) == 0) return text.size() - k;
    return std::string::npos;
  };
  switch (parser) {
    case ToolCallParser::kHermes:
      return marker(kHermesOpen);
    case ToolCallParser::kMistral:
      return marker(kMistralMarker);
    case ToolCallParser::kLlama3Json: {
      const size_t first = skip_space(text, from);
      if (first >= text.size()) return partial ? from : std::string::npos;
      const std::string tag = kPythonTag;
      if (text[first] == '{' || text.compare(first, tag.size(), tag) == 0) return first;
      if (partial && text.size() - first < tag.size() &&
          tag.compare(0, text.size() - first, text, first) == 0)
        return first;
      return std::string::npos;
    }
    case ToolCallParser::kNone:
      break;
  }
  return std::string::npos;
}

// The calls written from `pos` on, or nullopt when they do not parse.
std::optional<std::vector<ToolCall>> auto_calls(ToolCallParser parser, const std::string& text,
                                                size_t pos) {
  std::vector<ToolCall> calls;
  if (parser == ToolCallParser::kHermes) {
    const std::string open = kHermesOpen, close = kHermesClose;
    while (pos != std::string::npos) {
      const size_t body = pos + open.size();
      size_t end = text.find(close, body);
      const size_t next = end == std::string::npos ? std::string::npos : end + close.size();
      if (end == std::string::npos) end = text.size();  // EOS before the closing tag
      const auto v = parse_json(text.substr(body, end - body));
      const auto call = v ? call_of(*v, {"arguments", "parameters"}) : std::nullopt;
      if (!call) return std::nullopt;
      calls.push_back(*call);
      pos = next == std::string::npos ? next : text.find(open, next);
    }
    return calls;
  }
  if (parser == ToolCallParser::kMistral) {
    const size_t start = skip_space(text, pos + std::string(kMistralMarker).size());
    const size_t end = start < text.size() ? json_value_end(text, start) : std::string::npos;
    if (end == std::string::npos) return std::nullopt;
    const auto v = parse_json(text.substr(start, end - start));
    if (!v) return std::nullopt;
    const json list = v->is_array() ? *v : json::array({*v});
    for (const json& item : list) {
      const auto call = call_of(item, {"arguments", "parameters"});
      if (!call) return std::nullopt;
      calls.push_back(*call);
    }
    return calls.empty() ? std::nullopt : std::optional(calls);
  }
  if (parser == ToolCallParser::kLlama3Json) {
    size_t at = skip_space(text, pos);
    const std::string tag = kPythonTag;
    if (text.compare(at, tag.size(), tag) == 0) at = skip_space(text, at + tag.size());
    while (at < text.size()) {
      if (text[at] != '{') return std::nullopt;
      const size_t end = json_value_end(text, at);
      if (end == std::string::npos) return std::nullopt;
      const auto v = parse_json(text.substr(at, end - at));
      const auto call = v ? call_of(*v, {"parameters", "arguments"}) : std::nullopt;
      if (!call) return std::nullopt;
      calls.push_back(*call);
      at = skip_space(text, end);
      if (at < text.size() && text[at] == ';') at = skip_space(text, at + 1);
    }
    return calls.empty() ? std::nullopt : std::optional(calls);
  }
  return std::nullopt;
}

}  // namespace

ToolCallParser tool_call_parser_from_name(const std::string& name) {
  if (name.empty()) return ToolCallParser::kNone;
  if (name == "hermes") return ToolCallParser::kHermes;
  if (name == "llama3_json") return ToolCallParser::kLlama3Json;
  if (name == "mistral") return ToolCallParser::kMistral;
  throw Error("--tool-call-parser '" + name + "' is not one of hermes, llama3_json, mistral");
}

json forced_tool_call_schema(const json& tools, ToolChoice choice, const std::string& named,
                             bool parallel) {
  auto parameters = [](const json& function) {
    const auto it = function.find("parameters");
    return it == function.end() || it->is_null() ? json{{"type", "object"}} : *it;
  };
  if (choice == ToolChoice::kNamed) {
    for (const json& t : tools)
      if (t["function"]["name"] == named) return parameters(t["function"]);
    throw Error("tool_choice names '" + named + "', which is not in tools");
  }
  json branches = json::array();
  for (const json& t : tools)
    branches.push_back({{"type", "object"},
                        {"properties",
                         {{"name", {{"const", t["function"]["name"]}}},
                          {"parameters", parameters(t["function"])}}},
                        {"required", {"name", "parameters"}}});
  json schema = {{"type", "array"}, {"minItems", 1}, {"items", {{"anyOf", branches}}}};
  if (!parallel) schema["maxItems"] = 1;
  return schema;
}

ParsedToolOutput parse_tool_calls(ToolChoice choice, ToolCallParser parser,
                                  const std::string& named, const std::string& text) {
  ParsedToolOutput out;
  if (choice == ToolChoice::kNamed) {
    out.calls.push_back({named, text});
    return out;
  }
  if (choice == ToolChoice::kRequired) {
    const auto v = parse_json(text);
    if (v && v->is_array()) {
      for (const json& item : *v)
        if (const auto call = call_of(item, {"parameters", "arguments"}))
          out.calls.push_back(*call);
      if (out.calls.size() == v->size()) return out;
    }
    out.calls.clear();
    out.content = text;
    return out;
  }
  const size_t begin =
      choice == ToolChoice::kAuto ? calls_begin(parser, text, false) : std::string::npos;
  if (begin != std::string::npos) {
    if (auto calls = auto_calls(parser, text, begin)) {
      out.calls = std::move(*calls);
      out.content = content_or_null(text.substr(0, begin));
      return out;
    }
  }
  out.content = text;
  return out;
}

ToolCallStream::ToolCallStream(ToolChoice choice, ToolCallParser parser, std::string named)
    : choice_(choice), parser_(parser), named_(std::move(named)) {}

std::string ToolCallStream::push(const std::string& piece) {
  text_ += piece;
  if (choice_ == ToolChoice::kNamed) return piece;
  if (choice_ == ToolChoice::kRequired) return {};
  size_t hold = text_.size();
  if (choice_ == ToolChoice::kAuto) {
    const size_t begin = calls_begin(parser_, text_, true);
    if (begin != std::string::npos) hold = begin;
  }
  if (hold <= sent_) return {};
  std::string out = text_.substr(sent_, hold - sent_);
  sent_ = hold;
  return out;
}

ParsedToolOutput ToolCallStream::finish() {
  ParsedToolOutput parsed = parse_tool_calls(choice_, parser_, named_, text_);
  if (choice_ == ToolChoice::kNamed) return parsed;
  if (parsed.calls.empty()) {
    parsed.content = text_.substr(std::min(sent_, text_.size()));
    return parsed;
  }
  // Content before the calls that was held back (a marker's prefix that was one after all).
  const size_t begin = choice_ == ToolChoice::kAuto ? calls_begin(parser_, text_, false) : 0;
  parsed.content = begin > sent_ ? std::optional(text_.substr(sent_, begin - sent_)) : std::nullopt;
  return parsed;
}

}  // namespace l2kv::server
