// Tool calls in a chat's output. With tool_choice "required" or a named function the grammar
// forces the call (as vLLM does): a named function's output is its arguments, a required
// call's output the JSON array [{"name", "parameters"}, ...]. With "auto", a parser chosen per
// model by --tool-call-parser (vLLM's names) finds the calls the model wrote in its own format:
//   hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Qwen2.5, Qwen3, Hermes)
//   llama3_json  {"name": ..., "parameters": {...}}, calls separated by ';', after an optional
//                <|python_tag|> (Llama 3.1 / 3.2)
//   mistral      [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
// `<think>` sections of reasoning models are left out of the parse. Text whose calls do not
// parse stays content.
#pragma once

#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace l2kv::server {

enum class ToolCallParser : uint8_t { kNone, kHermes, kLlama3Json, kMistral };
// "" is kNone; an unknown name throws l2kv::Error listing the parsers.
ToolCallParser tool_call_parser_from_name(const std::string& name);

enum class ToolChoice : uint8_t { kNone, kAuto, kRequired, kNamed };

struct ToolCall {
  std::string name;
  std::string arguments;  // JSON text of an object
};

// A finished choice's text split into content (null when there is none) and calls.
struct ParsedToolOutput {
  std::optional<std::string> content;
  std::vector<ToolCall> calls;
};

// The JSON schema a forced call's output follows: a named function's parameters, or for
// "required" an array of at least one {"name", "parameters"} over every tool (at most one
// when `parallel` is false). `tools` is the request's validated tools list.
nlohmann::ordered_json forced_tool_call_schema(const nlohmann::ordered_json& tools,
                                               ToolChoice choice, const std::string& named,
                                               bool parallel);

ParsedToolOutput parse_tool_calls(ToolChoice choice, ToolCallParser parser,
                                  const std::string& named, const std::string& text);

// Streaming: which part of the text can go out as content while it is generated. Content is
// held back from where a call may begin (the parser's start marker, or a prefix of it at the
// end of the text so far); the calls come out at finish().
class ToolCallStream {
 public:
  ToolCallStream(ToolChoice choice, ToolCallParser parser, std::string named);
  // Content to send now (kAuto), or the arguments' new text (kNamed); empty for kRequired.
  std::string push(const std::string& piece);
  // The whole text's parse; `content` then holds only what push() did not send.
  ParsedToolOutput finish();
  // The text push() has not sent as content (kAuto, kRequired).
  std::string unsent() const { return text_.substr(std::min(sent_, text_.size())); }

 private:
  ToolChoice choice_;
  ToolCallParser parser_;
  std::string named_;
  std::string text_;
  size_t sent_ = 0;
};

}  // namespace l2kv::server
