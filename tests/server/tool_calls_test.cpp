// Tool-call parsers on recorded outputs of each format: calls and content found, <think>
// sections left out, malformed calls kept as content; streamed in every split (the text cut at
// each byte and in random pieces), the content sent plus what finish() returns equals the
// non-streamed parse.
#include "l2kv/server/tool_calls.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "l2kv/core/error.h"

namespace l2kv::server {
namespace {

struct Recorded {
  ToolCallParser parser;
  std::string text;
  std::vector<ToolCall> calls;  // empty: all content
  std::optional<std::string> content;
};

const std::vector<Recorded>& recorded() {
  static const std::vector<Recorded> cases = {
      {ToolCallParser::kHermes,
       "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": "
       "\"Paris\"}}\n</tool_call>",
       {{"get_weather", R"({"city":"Paris"})"}},
       "Let me check."},
      {ToolCallParser::kHermes,
       "<tool_call>\n{\"name\": \"a\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": "
       "\"b\", \"arguments\": {\"x\": [1, \"}\"]}}\n</tool_call>",
       {{"a", "{}"}, {"b", R"({"x":[1,"}"]})"}},
       std::nullopt},
      {ToolCallParser::kHermes,
       "<think>Maybe <tool_call>{\"name\": \"no\"}</tool_call> later.</think>\n\n<tool_call>\n{"
       "\"name\": \"yes\", \"arguments\": {}}\n</tool_call>",
       {{"yes", "{}"}},
       "<think>Maybe <tool_call>{\"name\": \"no\"}</tool_call> later.</think>"},
      {ToolCallParser::kHermes, "No tools needed: 4 < 5.", {}, "No tools needed: 4 < 5."},
      {ToolCallParser::kHermes,
       "<tool_call>\n{\"name\": broken}\n</tool_call>",
       {},
       "<tool_call>\n{\"name\": broken}\n</tool_call>"},
      {ToolCallParser::kLlama3Json,
       "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}",
       {{"get_weather", R"({"city":"Oslo"})"}},
       std::nullopt},
      {ToolCallParser::kLlama3Json,
       "<|python_tag|>{\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"parameters\": "
       "{\"n\": 2}}",
       {{"a", "{}"}, {"b", R"({"n":2})"}},
       std::nullopt},
      {ToolCallParser::kLlama3Json, "The answer is {not json}.", {}, "The answer is {not json}."},
      {ToolCallParser::kMistral,
       "Sure. [TOOL_CALLS] [{\"name\": \"search\", \"arguments\": {\"q\": \"l2kv\"}}]",
       {{"search", R"({"q":"l2kv"})"}},
       "Sure."},
      {ToolCallParser::kMistral, "[TOOL_CALLS] [oops", {}, "[TOOL_CALLS] [oops"},
  };
  return cases;
}

TEST(ToolCalls, ParsersFindCallsInRecordedOutputs) {
  for (const Recorded& r : recorded()) {
    const ParsedToolOutput p = parse_tool_calls(ToolChoice::kAuto, r.parser, "", r.text);
    ASSERT_EQ(p.calls.size(), r.calls.size()) << r.text;
    for (size_t k = 0; k < p.calls.size(); ++k) {
      EXPECT_EQ(p.calls[k].name, r.calls[k].name) << r.text;
      EXPECT_EQ(p.calls[k].arguments, r.calls[k].arguments) << r.text;
    }
    EXPECT_EQ(p.content, r.content) << r.text;
  }
}

// The content a stream sends, and its calls, whatever the pieces.
void check_stream(const Recorded& r, const std::vector<std::string>& pieces) {
  ToolCallStream stream(ToolChoice::kAuto, r.parser, "");
  std::string sent;
  for (const std::string& piece : pieces) sent += stream.push(piece);
  const ParsedToolOutput p = stream.finish();
  ASSERT_EQ(p.calls.size(), r.calls.size()) << r.text;
  for (size_t k = 0; k < p.calls.size(); ++k) EXPECT_EQ(p.calls[k].name, r.calls[k].name);
  const std::string content = sent + p.content.value_or("");
  if (r.calls.empty()) {
    EXPECT_EQ(content, r.text);
  } else {
    // Streamed content keeps its whitespace; the non-streamed one is trimmed at the end.
    std::string trimmed = content;
    while (!trimmed.empty() && (trimmed.back() == '\n' || trimmed.back() == ' '))
      trimmed.pop_back();
    EXPECT_EQ(trimmed, r.content.value_or("")) << r.text;
    // Nothing of a call went out as content.
    EXPECT_EQ(content.find("\"name\""),
              r.content ? r.content->find("\"name\"") : std::string::npos);
  }
}

TEST(ToolCalls, StreamedInEverySplit) {
  std::mt19937 rng(3);
  for (const Recorded& r : recorded()) {
    for (size_t cut = 0; cut <= r.text.size(); ++cut)
      check_stream(r, {r.text.substr(0, cut), r.text.substr(cut)});
    std::vector<std::string> bytes;
    for (char c : r.text) bytes.emplace_back(1, c);
    check_stream(r, bytes);
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<std::string> pieces;
      for (size_t at = 0; at < r.text.size();) {
        const size_t n = 1 + rng() % 6;
        pieces.push_back(r.text.substr(at, n));
        at += n;
      }
      check_stream(r, pieces);
    }
  }
}

TEST(ToolCalls, ForcedChoices) {
  const ParsedToolOutput named =
      parse_tool_calls(ToolChoice::kNamed, ToolCallParser::kNone, "f", R"({"a": 1})");
  ASSERT_EQ(named.calls.size(), 1u);
  EXPECT_EQ(named.calls[0].name, "f");
  EXPECT_EQ(named.calls[0].arguments, R"({"a": 1})");
  EXPECT_FALSE(named.content);
  const ParsedToolOutput required = parse_tool_calls(
      ToolChoice::kRequired, ToolCallParser::kNone, "",
      R"([{"name": "f", "parameters": {"a": 1}}, {"name": "g", "parameters": {}}])");
  ASSERT_EQ(required.calls.size(), 2u);
  EXPECT_EQ(required.calls[1].name, "g");
  EXPECT_EQ(required.calls[0].arguments, R"({"a":1})");
  const ParsedToolOutput cut =
      parse_tool_calls(ToolChoice::kRequired, ToolCallParser::kNone, "", R"([{"name": "f", "par)");
  EXPECT_TRUE(cut.calls.empty());
  EXPECT_EQ(cut.content, R"([{"name": "f", "par)");
  EXPECT_THROW(tool_call_parser_from_name("qwen"), Error);
  EXPECT_EQ(tool_call_parser_from_name("llama3_json"), ToolCallParser::kLlama3Json);
}

}  // namespace
}  // namespace l2kv::server
