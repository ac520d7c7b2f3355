// Tool calls in a chat's output. With tool_choice "required" or a named function the grammar
// forces the call (as vLLM does): a named function's output is its arguments, a required
// call's output the JSON array [{"name", "parameters"}, ...]. With "auto", a parser chosen per
// model by --tool-call-parser (vLLM's names) finds the calls the model wrote in its own format:
//   hermes       <tool_call>{"name": ..., "arguments": {...}}</tool_call> (Qwen2.5, Qwen3, Hermes)
//   llama3_json  {"name": ..., "parameters": {...}}, calls separated by ';', after an optional
//                <|python_tag|> (Llama 3.1 / 3.2)
//   mistral      [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...], or the tokenizer v11+
//                form [TOOL_CALLS]name[ARGS]{...}, one marker per call
// `<think>` sections of reasoning models are left out of the parse. Text whose calls do not
// parse stays content.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "l2kv/server/json_value_scanner.h"

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

// One piece of a streamed chat choice with tools, in the order it is sent.
struct ToolStreamEvent {
  enum class Kind : uint8_t {
    kContent,    // text before the calls (or of a call that turned out malformed)
    kCallStart,  // a call begins: `text` is its function's name (arguments "" for now)
    kArguments,  // the next piece of call `call`'s arguments
  };
  Kind kind = Kind::kContent;
  size_t call = 0;  // the call's index in the choice: 0, 1, ...
  std::string text;
};

// Streaming: reads a choice's text as it is generated and says what can be sent, as OpenAI
// streams tool calls: content, then per call its start (name) and its arguments in pieces
// whose concatenation is the non-streamed call's arguments. Only what may begin a call is held
// back (a marker's prefix at the end of the text, a call's text until its name is known, the
// whitespace before it); markup is never content. A call's text that stops parsing before its
// name is out becomes content, with all that follows; one that stops parsing after it has
// started stays started (broken() tells), and the text from where it broke is content.
// `<think>` at the start is read as reasoning, content with no calls, up to `</think>`.
class ToolCallStream {
 public:
  ToolCallStream(ToolChoice choice, ToolCallParser parser, std::string named);
  ~ToolCallStream();
  ToolCallStream(ToolCallStream&&) noexcept;
  std::vector<ToolStreamEvent> push(std::string_view piece);
  // The end of the text: what was held back.
  std::vector<ToolStreamEvent> finish();
  size_t calls_started() const { return calls_; }
  bool broken() const { return broken_; }

 private:
  enum class State : uint8_t;
  enum class Member : uint8_t;
  enum class Value : uint8_t;
  struct Object;  // a call's {"name": ..., "arguments": ...} being read

  // Reads text_ from pos_ as far as it can be decided.
  void run();
  // Handles text_[pos_] in the state; false when it needs more text to decide.
  bool step();
  bool step_object(char c);
  bool skip_space(char c);
  // text_ at pos_ against `marker`: 1 whole, 0 not, -1 undecided (the text ends in its prefix).
  int match(std::string_view marker) const;
  void take(size_t n);  // pos_ += n, what was read being markup or a call's text
  void content(size_t n);
  void start_call(const std::string& name);
  void arguments(const std::string& text);
  void begin_object(State after);
  void fail();
  void event(ToolStreamEvent::Kind kind, const std::string& text);

  ToolChoice choice_;
  ToolCallParser parser_;
  std::string named_;
  std::string text_;
  size_t pos_ = 0;        // read up to here
  size_t raw_from_ = 0;   // text_ before here is sent or consumed; after, held back
  bool holding_ = false;  // a call's text is read but not started: raw_from_ stays
  bool eof_ = false;
  State state_;
  State after_object_;
  std::unique_ptr<Object> object_;
  std::unique_ptr<JsonValueScanner> args_;  // mistral's [ARGS] value
  std::string name_;                        // mistral's name before [ARGS]
  std::string space_;                       // content's trailing whitespace, held back
  size_t calls_ = 0;
  bool broken_ = false;
  std::vector<ToolStreamEvent> events_;
};

}  // namespace l2kv::server
