#include "l2kv/server/tool_calls.h"

#include <utility>

#include "l2kv/core/error.h"

namespace l2kv::server {
namespace {

using json = nlohmann::ordered_json;

constexpr std::string_view kHermesOpen = "<tool_call>";
constexpr std::string_view kHermesClose = "</tool_call>";
constexpr std::string_view kMistralMarker = "[TOOL_CALLS]";
constexpr std::string_view kMistralArgs = "[ARGS]";
constexpr std::string_view kPythonTag = "<|python_tag|>";
constexpr std::string_view kThinkStart = "<think>";
constexpr std::string_view kThinkEnd = "</think>";

// Where the parse starts: after the last </think> (reasoning is never a call).
size_t parse_start(const std::string& text) {
  const size_t end = text.rfind(kThinkEnd);
  return end == std::string::npos ? 0 : end + kThinkEnd.size();
}

std::optional<std::string> content_or_null(std::string text) {
  while (!text.empty() && (text.back() == ' ' || text.back() == '\n' || text.back() == '\t'))
    text.pop_back();
  if (text.empty()) return std::nullopt;
  return text;
}

}  // namespace

ToolCallParser tool_call_parser_from_name(const std::string& name) {
  if (name.empty()) return ToolCallParser::kNone;
  if (name == "hermes") return ToolCallParser::kHermes;
  if (name == "llama3_json") return ToolCallParser::kLlama3Json;
  if (name == "mistral") return ToolCallParser::kMistral;
  throw Error("--tool-call-parser '" + name + "' is not one of hermes, llama3_json, mistral");
}

namespace {

// A function's arguments are a JSON object: its parameters schema with "type": "object" where
// none is given (missing, null or {} included, as vLLM reads them).
json object_parameters(const json& function) {
  const auto it = function.find("parameters");
  json p = it == function.end() || it->is_null() ? json::object() : *it;
  if (!p.contains("type")) p["type"] = "object";
  return p;
}

// Keywords whose values are data (a "$ref" key inside them is a value, not a reference), and
// keywords whose values map names to schemas (a property may be named "const" or "$ref").
bool is_data_keyword(const std::string& key) {
  return key == "const" || key == "enum" || key == "default" || key == "examples";
}
bool is_schema_map_keyword(const std::string& key) {
  return key == "properties" || key == "$defs" || key == "definitions" ||
         key == "patternProperties" || key == "dependentSchemas";
}

// Calls `visit` on every "$ref" string of schema `s`, as a schema is read: through
// subschemas, lists of them and maps of them, never into data.
template <typename S, typename Visit>
void for_each_reference(S& s, Visit&& visit) {
  if (s.is_array()) {
    for (auto& v : s) for_each_reference(v, visit);
    return;
  }
  if (!s.is_object()) return;
  for (auto& [key, value] : s.items()) {
    if (key == "$ref" && value.is_string()) {
      visit(value);
    } else if (is_schema_map_keyword(key) && value.is_object()) {
      for (auto& [name, sub] : value.items()) for_each_reference(sub, visit);
    } else if (!is_data_keyword(key)) {
      for_each_reference(value, visit);
    }
  }
}

bool has_reference(const json& s) {
  bool found = false;
  for_each_reference(s, [&](const json&) { found = true; });
  return found;
}

// `s` with every reference within it ("#", "#/$defs/N", ...) moved under `prefix` ("#/$defs/t0"),
// for a schema that now sits at that place of a larger one.
json rebase_references(json s, const std::string& prefix) {
  for_each_reference(s, [&](json& ref) {
    const std::string text = ref.get<std::string>();
    if (!text.empty() && text[0] == '#') ref = prefix + text.substr(1);
  });
  return s;
}

}  // namespace

json forced_tool_call_schema(const json& tools, ToolChoice choice, const std::string& named,
                             bool parallel) {
  if (choice == ToolChoice::kNamed) {
    for (const json& t : tools)
      if (t["function"]["name"] == named) return object_parameters(t["function"]);
    throw Error("tool_choice names '" + named + "', which is not in tools");
  }
  // Each function's parameters go inside an array of calls. One that refers within itself
  // ($ref to "#" or its $defs) is placed under the array schema's $defs, its references
  // rebased there, so they still resolve.
  json defs = json::object();
  json branches = json::array();
  for (size_t i = 0; i < tools.size(); ++i) {
    json parameters = object_parameters(tools[i]["function"]);
    if (has_reference(parameters)) {
      const std::string name = "tool" + std::to_string(i);
      defs[name] = rebase_references(std::move(parameters), "#/$defs/" + name);
      parameters = {{"$ref", "#/$defs/" + name}};
    }
    branches.push_back(
        {{"type", "object"},
         {"properties",
          {{"name", {{"const", tools[i]["function"]["name"]}}}, {"parameters", parameters}}},
         {"required", {"name", "parameters"}}});
  }
  json schema = {{"type", "array"}, {"minItems", 1}, {"items", {{"anyOf", branches}}}};
  if (!parallel) schema["maxItems"] = 1;
  if (!defs.empty()) schema["$defs"] = std::move(defs);
  return schema;
}

ParsedToolOutput parse_tool_calls(ToolChoice choice, ToolCallParser parser,
                                  const std::string& named, const std::string& text) {
  ParsedToolOutput out;
  if (choice == ToolChoice::kNamed) {
    out.calls.push_back({named, text});
    return out;
  }
  if (choice == ToolChoice::kNone ||
      (choice == ToolChoice::kAuto && parser == ToolCallParser::kNone)) {
    out.content = text;
    return out;
  }
  // The stream's reading of the whole text, so streamed and not give the same calls. Whatever
  // comes before the last </think> is reasoning (also when the template opened the section).
  const size_t begin = choice == ToolChoice::kAuto ? parse_start(text) : 0;
  ToolCallStream stream(choice, parser, named);
  std::vector<ToolStreamEvent> events = stream.push(std::string_view(text).substr(begin));
  for (ToolStreamEvent& e : stream.finish()) events.push_back(std::move(e));
  std::string content = text.substr(0, begin);
  for (const ToolStreamEvent& e : events) {
    if (e.kind == ToolStreamEvent::Kind::kContent) {
      content += e.text;
    } else if (e.kind == ToolStreamEvent::Kind::kCallStart) {
      out.calls.push_back({e.text, ""});
    } else {
      out.calls[e.call].arguments += e.text;
    }
  }
  // Text whose calls do not all parse stays content.
  if (out.calls.empty() || stream.broken()) {
    out.calls.clear();
    out.content = text;
    return out;
  }
  out.content = content_or_null(std::move(content));
  return out;
}

enum class ToolCallStream::State : uint8_t {
  kStart,           // before anything but whitespace (and after a <think> section)
  kThink,           // in <think>...</think>: content
  kText,            // content, until a call's marker
  kPlain,           // content to the end
  kNamed,           // a named function's arguments, as they come
  kHermesOpen,      // after <tool_call>
  kHermesClose,     // after a hermes call's object, before </tool_call>
  kBetween,         // after a call: text dropped until the next marker
  kObject,          // in a call's object
  kMistralOpen,     // after [TOOL_CALLS]
  kMistralName,     // [TOOL_CALLS]name
  kMistralArgs,     // after [ARGS]
  kArrayFirst,      // after a list's [
  kArrayNext,       // after an item of the list
  kArrayItem,       // after a list's comma
  kTrailing,        // after a required call's list: whitespace only
  kLlamaTagged,     // after <|python_tag|>
  kLlamaNext,       // after a llama3 call
  kLlamaAfterSemi,  // after a llama3 call's ';'
};

enum class ToolCallStream::Member : uint8_t {
  kFirst,
  kNext,
  kKey,
  kColon,
  kValue,
  kInValue,
  kAfter
};
enum class ToolCallStream::Value : uint8_t { kName, kArguments, kOther };

struct ToolCallStream::Object {
  Member member = Member::kFirst;
  Value value = Value::kOther;
  JsonValueScanner scanner{JsonValueScanner::Mode::kSkip};
  std::string key;
  std::string name;
  bool has_name = false;
  bool has_arguments = false;
  std::string held_arguments;  // arguments read before the name
};

namespace {

bool is_json_space(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.';
}

}  // namespace

ToolCallStream::ToolCallStream(ToolChoice choice, ToolCallParser parser, std::string named)
    : choice_(choice),
      parser_(parser),
      named_(std::move(named)),
      state_(State::kStart),
      after_object_(State::kBetween) {
  if (choice_ == ToolChoice::kNamed) state_ = State::kNamed;
  if (choice_ == ToolChoice::kNone ||
      (choice_ == ToolChoice::kAuto && parser == ToolCallParser::kNone))
    state_ = State::kPlain;
}

ToolCallStream::~ToolCallStream() = default;
ToolCallStream::ToolCallStream(ToolCallStream&&) noexcept = default;

std::vector<ToolStreamEvent> ToolCallStream::push(std::string_view piece) {
  text_ += piece;
  run();
  return std::exchange(events_, {});
}

std::vector<ToolStreamEvent> ToolCallStream::finish() {
  eof_ = true;
  run();
  switch (state_) {
    case State::kStart:
    case State::kThink:
    case State::kText:
    case State::kPlain:
    case State::kHermesClose:  // the output may end before </tool_call>
    case State::kBetween:
    case State::kTrailing:
    case State::kLlamaNext:
    case State::kLlamaAfterSemi:
      break;
    case State::kNamed:
      if (calls_ == 0) start_call(named_);
      break;
    default:  // inside a call
      fail();
      run();
      break;
  }
  if ((calls_ == 0 || broken_) && !space_.empty())
    event(ToolStreamEvent::Kind::kContent, std::exchange(space_, {}));
  return std::exchange(events_, {});
}

void ToolCallStream::run() {
  while (pos_ < text_.size() && step()) {
  }
}

int ToolCallStream::match(std::string_view marker) const {
  const size_t n = std::min(text_.size() - pos_, marker.size());
  if (text_.compare(pos_, n, marker, 0, n) != 0) return 0;
  if (n == marker.size()) return 1;
  return eof_ ? 0 : -1;
}

void ToolCallStream::take(size_t n) {
  pos_ += n;
  if (!holding_) raw_from_ = pos_;
}

void ToolCallStream::content(size_t n) {
  const std::string text = text_.substr(pos_, n);
  pos_ += n;
  raw_from_ = pos_;
  // Whitespace at the end waits: before a call it is dropped, as the non-streamed content
  // is trimmed.
  const size_t last = text.find_last_not_of(" \n\t");
  if (last == std::string::npos) {
    space_ += text;
    return;
  }
  event(ToolStreamEvent::Kind::kContent, std::exchange(space_, {}) + text.substr(0, last + 1));
  space_ = text.substr(last + 1);
}

void ToolCallStream::start_call(const std::string& name) {
  space_.clear();
  holding_ = false;
  raw_from_ = pos_;
  event(ToolStreamEvent::Kind::kCallStart, name);
  ++calls_;
}

void ToolCallStream::arguments(const std::string& text) {
  if (!text.empty()) event(ToolStreamEvent::Kind::kArguments, text);
}

void ToolCallStream::event(ToolStreamEvent::Kind kind, const std::string& text) {
  size_t call = 0;
  if (kind == ToolStreamEvent::Kind::kCallStart) call = calls_;
  if (kind == ToolStreamEvent::Kind::kArguments) call = calls_ - 1;
  // Pieces of one kind in a row (content, or one call's arguments) are one event.
  if (kind != ToolStreamEvent::Kind::kCallStart && !events_.empty() &&
      events_.back().kind == kind && events_.back().call == call) {
    events_.back().text += text;
    return;
  }
  events_.push_back({kind, call, text});
}

void ToolCallStream::begin_object(State after) {
  holding_ = true;
  object_ = std::make_unique<Object>();
  after_object_ = after;
  state_ = State::kObject;
  take(1);
}

void ToolCallStream::fail() {
  if (calls_ > 0) broken_ = true;
  // What a started call's scanner took but did not write yet belongs to its arguments.
  if (object_ && object_->has_name && object_->member == Member::kInValue &&
      object_->value == Value::kArguments)
    arguments(object_->scanner.pending());
  if (args_) arguments(args_->pending());
  object_.reset();
  args_.reset();
  name_.clear();
  holding_ = false;
  pos_ = raw_from_;
  state_ = State::kPlain;
}

bool ToolCallStream::skip_space(char c) {
  if (!is_json_space(c)) return false;
  take(1);
  return true;
}

bool ToolCallStream::step() {
  const char c = text_[pos_];
  switch (state_) {
    case State::kPlain:
      content(text_.size() - pos_);
      return true;
    case State::kNamed: {
      if (calls_ == 0) start_call(named_);
      const std::string rest = text_.substr(pos_);
      take(rest.size());
      arguments(rest);
      return true;
    }
    case State::kStart: {
      if (choice_ == ToolChoice::kRequired) {
        if (is_json_space(c)) {
          content(1);
        } else if (c == '[') {
          holding_ = true;
          take(1);
          state_ = State::kArrayFirst;
        } else {
          fail();
        }
        return true;
      }
      if (is_json_space(c)) {
        content(1);
        return true;
      }
      const int think = match(kThinkStart);
      if (think < 0) return false;
      if (think > 0) {
        content(kThinkStart.size());
        state_ = State::kThink;
        return true;
      }
      if (parser_ != ToolCallParser::kLlama3Json) {
        state_ = State::kText;
        return true;
      }
      // llama3_json: the whole answer is calls, or none of it.
      if (c == '{') {
        begin_object(State::kLlamaNext);
        return true;
      }
      const int tag = match(kPythonTag);
      if (tag < 0) return false;
      if (tag > 0) {
        holding_ = true;
        take(kPythonTag.size());
        state_ = State::kLlamaTagged;
      } else {
        state_ = State::kPlain;
      }
      return true;
    }
    case State::kThink: {
      const int end = match(kThinkEnd);
      if (end < 0) return false;
      content(end > 0 ? kThinkEnd.size() : 1);
      if (end > 0) state_ = State::kStart;
      return true;
    }
    case State::kText:
    case State::kBetween: {
      const bool hermes = parser_ == ToolCallParser::kHermes;
      const int marker = match(hermes ? kHermesOpen : kMistralMarker);
      if (marker < 0) return false;
      if (marker == 0) {
        if (state_ == State::kText)
          content(1);
        else
          take(1);  // text between and after calls is not content, as vLLM reads it
        return true;
      }
      holding_ = true;
      take(hermes ? kHermesOpen.size() : kMistralMarker.size());
      state_ = hermes ? State::kHermesOpen : State::kMistralOpen;
      return true;
    }
    case State::kHermesOpen:
      if (skip_space(c)) return true;
      if (c == '{')
        begin_object(State::kHermesClose);
      else
        fail();
      return true;
    case State::kHermesClose: {
      if (skip_space(c)) return true;
      const int close = match(kHermesClose);
      if (close < 0) return false;
      if (close == 0) {
        fail();
      } else {
        take(kHermesClose.size());
        state_ = State::kBetween;
      }
      return true;
    }
    case State::kObject:
      return step_object(c);
    case State::kMistralOpen:
      if (skip_space(c)) return true;
      if (c == '[') {
        take(1);
        state_ = State::kArrayFirst;
      } else if (c == '{') {
        begin_object(State::kBetween);
      } else if (is_name_char(c)) {
        state_ = State::kMistralName;
      } else {
        fail();
      }
      return true;
    case State::kMistralName: {
      if (is_name_char(c)) {
        name_ += c;
        take(1);
        return true;
      }
      const int args = match(kMistralArgs);
      if (args < 0) return false;
      if (args == 0) {
        fail();
        return true;
      }
      take(kMistralArgs.size());
      start_call(std::exchange(name_, {}));
      state_ = State::kMistralArgs;
      return true;
    }
    case State::kMistralArgs: {
      if (!args_) {
        if (skip_space(c)) return true;
        if (c != '{') {
          fail();
          return true;
        }
        args_ = std::make_unique<JsonValueScanner>(JsonValueScanner::Mode::kCompact);
      }
      std::string out;
      const JsonValueScanner::Status status = args_->feed(c, out);
      if (status == JsonValueScanner::Status::kError) {
        fail();
        return true;
      }
      take(1);
      arguments(out);
      if (status == JsonValueScanner::Status::kDone) {
        args_.reset();
        state_ = State::kBetween;
      }
      return true;
    }
    case State::kArrayFirst:
    case State::kArrayItem:
      if (skip_space(c)) return true;
      if (c == '{')
        begin_object(State::kArrayNext);
      else
        fail();
      return true;
    case State::kArrayNext:
      if (skip_space(c)) return true;
      if (c == ',') {
        take(1);
        state_ = State::kArrayItem;
      } else if (c == ']') {
        take(1);
        state_ = choice_ == ToolChoice::kRequired ? State::kTrailing : State::kBetween;
      } else {
        fail();
      }
      return true;
    case State::kTrailing:
      if (!skip_space(c)) fail();
      return true;
    case State::kLlamaTagged:
    case State::kLlamaNext:
    case State::kLlamaAfterSemi:
      if (skip_space(c)) return true;
      if (c == '{') {
        begin_object(State::kLlamaNext);
      } else if (c == ';' && state_ == State::kLlamaNext) {
        take(1);
        state_ = State::kLlamaAfterSemi;
      } else {
        fail();
      }
      return true;
  }
  return true;
}

// One byte of a call's {"name": ..., "arguments": ...}: the call starts once its name is
// read; arguments read before are held until then. Other members are checked and skipped.
bool ToolCallStream::step_object(char c) {
  Object& o = *object_;
  using Status = JsonValueScanner::Status;
  using Mode = JsonValueScanner::Mode;
  switch (o.member) {
    case Member::kFirst:
    case Member::kNext:
      if (skip_space(c)) return true;
      if (c == '"') {
        o.scanner = JsonValueScanner(Mode::kString);
        o.key.clear();
        std::string ignored;
        o.scanner.feed(c, ignored);
        o.member = Member::kKey;
        take(1);
      } else if (c == '}' && o.member == Member::kFirst) {
        fail();  // a call without a name
      } else {
        fail();
      }
      return true;
    case Member::kKey: {
      const Status status = o.scanner.feed(c, o.key);
      if (status == Status::kError) {
        fail();
        return true;
      }
      take(1);
      if (status == Status::kDone) o.member = Member::kColon;
      return true;
    }
    case Member::kColon:
      if (skip_space(c)) return true;
      if (c != ':') {
        fail();
        return true;
      }
      take(1);
      o.member = Member::kValue;
      return true;
    case Member::kValue: {
      if (skip_space(c)) return true;
      const bool args_key = o.key == "arguments" || o.key == "parameters";
      if (o.key == "name" && !o.has_name) {
        if (c != '"') {
          fail();
          return true;
        }
        o.value = Value::kName;
        o.scanner = JsonValueScanner(Mode::kString);
      } else if (args_key && !o.has_arguments) {
        // An object is passed on as JSON, a string (JSON written as a string) as its text.
        if (c != '{' && c != '"') {
          fail();
          return true;
        }
        o.value = Value::kArguments;
        o.scanner = JsonValueScanner(c == '{' ? Mode::kCompact : Mode::kString);
      } else {
        o.value = Value::kOther;
        o.scanner = JsonValueScanner(Mode::kSkip);
      }
      o.member = Member::kInValue;
      return true;
    }
    case Member::kInValue: {
      std::string out;
      const Status status = o.scanner.feed(c, out);
      if (status == Status::kError) {
        fail();
        return true;
      }
      if (status != Status::kDoneBefore) take(1);
      if (o.value == Value::kName) {
        o.name += out;
      } else if (o.value == Value::kArguments) {
        if (o.has_name)
          arguments(out);
        else
          o.held_arguments += out;
      }
      if (status == Status::kMore) return true;
      if (o.value == Value::kName) {
        o.has_name = true;
        start_call(o.name);
        arguments(std::exchange(o.held_arguments, {}));
      } else if (o.value == Value::kArguments) {
        o.has_arguments = true;
      }
      o.member = Member::kAfter;
      return true;
    }
    case Member::kAfter:
      if (skip_space(c)) return true;
      if (c == ',') {
        take(1);
        o.member = Member::kNext;
        return true;
      }
      if (c != '}') {
        fail();
        return true;
      }
      if (!o.has_name) {
        fail();
        return true;
      }
      take(1);
      if (!o.has_arguments) arguments("{}");
      object_.reset();
      state_ = after_object_;
      return true;
  }
  return true;
}

}  // namespace l2kv::server
