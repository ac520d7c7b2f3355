// Tool-call parsers on recorded outputs of each format: calls and content found, <think>
// sections left out, malformed calls kept as content; streamed in every split (the text cut at
// each byte, one byte at a time, and at random token boundaries), the deltas put together as
// an OpenAI client does equal the non-streamed parse: names, indices, arguments, content.
#include "l2kv/server/tool_calls.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/server/json_value_scanner.h"
#include "l2kv/structured/json_schema.h"

namespace l2kv::server {
namespace {

struct Recorded {
  ToolCallParser parser;
  std::string text;
  std::vector<ToolCall> calls;  // empty: all content
  std::optional<std::string> content;
  ToolChoice choice = ToolChoice::kAuto;
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
      // Qwen3 with arguments written before the name, escapes, numbers as nlohmann prints them.
      {ToolCallParser::kHermes,
       "I'll run it.\n\n<tool_call>\n{\"arguments\": {\"code\": \"print(\\\"h\\u00e9\\\")\\n\", "
       "\"n\": 1.50e1, \"ok\": true, \"path\": \"a\\/b\", \"e\": \"\\ud83d\\ude00\"}, \"name\": "
       "\"python\"}\n</tool_call>\n",
       {{"python",
         "{\"code\":\"print(\\\"h\xC3\xA9\\\")\\n\",\"n\":15.0,\"ok\":true,\"path\":"
         "\"a/b\",\"e\":\"\xF0\x9F\x98\x80\"}"}},
       "I'll run it."},
      // Arguments given as a JSON string, and a closing tag inside a string.
      {ToolCallParser::kHermes,
       "<tool_call>{\"name\": \"f\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call><tool_call>"
       "{\"name\": \"g\", \"arguments\": {\"s\": \"</tool_call>\"}}</tool_call>",
       {{"f", R"({"a": 1})"}, {"g", R"({"s":"</tool_call>"})"}},
       std::nullopt},
      // A partial marker that is not one, and a call without its closing tag (EOS).
      {ToolCallParser::kHermes,
       "a <tool_cal b\n<tool_call>{\"name\": \"h\"}",
       {{"h", "{}"}},
       "a <tool_cal b"},
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
      {ToolCallParser::kLlama3Json,
       "<think>The user wants Oslo.</think>\n\n{\"name\": \"w\", \"parameters\": {\"c\": "
       "\"Oslo\"}}",
       {{"w", R"({"c":"Oslo"})"}},
       "<think>The user wants Oslo.</think>"},
      {ToolCallParser::kMistral,
       "Sure. [TOOL_CALLS] [{\"name\": \"search\", \"arguments\": {\"q\": \"l2kv\"}}]",
       {{"search", R"({"q":"l2kv"})"}},
       "Sure."},
      {ToolCallParser::kMistral, "[TOOL_CALLS] [oops", {}, "[TOOL_CALLS] [oops"},
      {ToolCallParser::kMistral,
       "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"x\": -0.5}}, {\"name\": \"b\", "
       "\"arguments\": {\"y\": [null]}}]",
       {{"a", R"({"x":-0.5})"}, {"b", R"({"y":[null]})"}},
       std::nullopt},
      // Mistral tokenizer v11+: [TOOL_CALLS]name[ARGS]{...}, one marker per call.
      {ToolCallParser::kMistral,
       "Checking both.[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]get_time[ARGS]"
       "{\"tz\": \"CET\"}",
       {{"get_weather", R"({"city":"Paris"})"}, {"get_time", R"({"tz":"CET"})"}},
       "Checking both."},
      {ToolCallParser::kMistral,
       "[TOOL_CALLS]get_weather{\"city\": 1}",
       {},
       "[TOOL_CALLS]get_weather{\"city\": 1}"},
      // tool_choice "required": the grammar's JSON list.
      {ToolCallParser::kNone,
       "[{\"name\": \"f\", \"parameters\": {\"a\": 1}}, {\"name\": \"g\", \"parameters\": {}}]",
       {{"f", R"({"a":1})"}, {"g", "{}"}},
       std::nullopt,
       ToolChoice::kRequired},
  };
  return cases;
}

TEST(ToolCalls, ParsersFindCallsInRecordedOutputs) {
  for (const Recorded& r : recorded()) {
    const ParsedToolOutput p = parse_tool_calls(r.choice, r.parser, "", r.text);
    ASSERT_EQ(p.calls.size(), r.calls.size()) << r.text;
    for (size_t k = 0; k < p.calls.size(); ++k) {
      EXPECT_EQ(p.calls[k].name, r.calls[k].name) << r.text;
      EXPECT_EQ(p.calls[k].arguments, r.calls[k].arguments) << r.text;
    }
    EXPECT_EQ(p.content, r.content) << r.text;
  }
}

// A stream's deltas put together as an OpenAI client does: content appended, calls by index
// (the name from the first delta, arguments appended).
struct Assembled {
  std::string content;
  std::vector<ToolCall> calls;
  bool broken = false;
};

Assembled assemble(ToolCallStream& stream, const std::vector<std::string>& pieces) {
  Assembled a;
  auto take = [&](const std::vector<ToolStreamEvent>& events) {
    for (const ToolStreamEvent& e : events) {
      switch (e.kind) {
        case ToolStreamEvent::Kind::kContent:
          EXPECT_FALSE(e.text.empty());
          a.content += e.text;
          break;
        case ToolStreamEvent::Kind::kCallStart:
          // Calls start in order, each once.
          EXPECT_EQ(e.call, a.calls.size());
          a.calls.push_back({e.text, ""});
          break;
        case ToolStreamEvent::Kind::kArguments:
          EXPECT_FALSE(e.text.empty());
          EXPECT_EQ(e.call + 1, a.calls.size()) << "arguments of a call that is not the last";
          if (e.call < a.calls.size()) a.calls[e.call].arguments += e.text;
          break;
      }
    }
  };
  for (const std::string& piece : pieces) take(stream.push(piece));
  take(stream.finish());
  a.broken = stream.broken();
  return a;
}

// Streamed in these pieces, the same as the non-streamed parse.
void check_stream(const Recorded& r, const std::vector<std::string>& pieces) {
  ToolCallStream stream(r.choice, r.parser, "");
  const Assembled a = assemble(stream, pieces);
  const ParsedToolOutput p = parse_tool_calls(r.choice, r.parser, "", r.text);
  ASSERT_EQ(a.calls.size(), p.calls.size()) << r.text;
  for (size_t k = 0; k < p.calls.size(); ++k) {
    EXPECT_EQ(a.calls[k].name, p.calls[k].name) << r.text;
    EXPECT_EQ(a.calls[k].arguments, p.calls[k].arguments) << r.text;
  }
  EXPECT_EQ(a.content, p.content.value_or("")) << r.text;
  EXPECT_FALSE(a.broken) << r.text;
  // The markup of a format never reaches content.
  if (!p.calls.empty()) {
    for (const char* markup : {"<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]"})
      EXPECT_EQ(a.content.find(markup), r.content.value_or("").find(markup)) << r.text;
  }
}

std::vector<std::string> random_pieces(const std::string& text, std::mt19937& rng) {
  std::vector<std::string> pieces;
  for (size_t at = 0; at < text.size();) {
    const size_t n = 1 + rng() % 8;  // tokens of 1 to 8 bytes
    pieces.push_back(text.substr(at, n));
    at += n;
  }
  return pieces;
}

TEST(ToolCalls, StreamedInEverySplit) {
  for (const Recorded& r : recorded()) {
    check_stream(r, {r.text});
    for (size_t cut = 0; cut <= r.text.size(); ++cut)
      check_stream(r, {r.text.substr(0, cut), r.text.substr(cut)});
    std::vector<std::string> bytes;
    for (char c : r.text) bytes.emplace_back(1, c);
    check_stream(r, bytes);
    for (uint32_t seed = 1; seed <= 5; ++seed) {
      std::mt19937 rng(seed);
      for (int trial = 0; trial < 20; ++trial) check_stream(r, random_pieces(r.text, rng));
    }
  }
}

// Content goes out as soon as it cannot begin a call, a call's start as soon as its name is
// read, and its arguments piece by piece.
TEST(ToolCalls, StreamHoldsBackOnlyWhatMayBeginACall) {
  ToolCallStream s(ToolChoice::kAuto, ToolCallParser::kHermes, "");
  auto events = s.push("Let me check.\n<tool_");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].text, "Let me check.");
  EXPECT_TRUE(s.push("call>\n{\"name\": \"get_weather").empty());
  events = s.push("\", \"arguments\": {\"ci");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, ToolStreamEvent::Kind::kCallStart);
  EXPECT_EQ(events[0].text, "get_weather");
  EXPECT_EQ(events[1].kind, ToolStreamEvent::Kind::kArguments);
  EXPECT_EQ(events[1].text, "{\"ci");
  events = s.push("ty\": \"Par");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].text, "ty\":\"Par");
  events = s.push("is\"}}\n</tool_call>");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].text, "is\"}");
  EXPECT_TRUE(s.finish().empty());
  EXPECT_EQ(s.calls_started(), 1u);
}

// A call that breaks after it started stays started; the text from where it broke is content
// (the non-streamed parse, which sees the whole text, keeps all of it as content).
TEST(ToolCalls, StreamedCallThatBreaksLeavesTheRestAsContent) {
  const std::string text =
      "<tool_call>{\"name\": \"f\", \"arguments\": {\"a\": 1}}</tool_call>\n<tool_call>{\"name\": "
      "\"g\", \"arguments\": {\"b\": 2}} oops</tool_call>";
  ToolCallStream s(ToolChoice::kAuto, ToolCallParser::kHermes, "");
  std::vector<std::string> bytes;
  for (char c : text) bytes.emplace_back(1, c);
  const Assembled a = assemble(s, bytes);
  ASSERT_EQ(a.calls.size(), 2u);
  EXPECT_EQ(a.calls[1].arguments, R"({"b":2})");
  EXPECT_TRUE(a.broken);
  EXPECT_EQ(a.content, "oops</tool_call>");
  const ParsedToolOutput p = parse_tool_calls(ToolChoice::kAuto, ToolCallParser::kHermes, "", text);
  EXPECT_TRUE(p.calls.empty());
  EXPECT_EQ(p.content, text);

  // Cut (max_tokens) before the name: all of it is content, nothing lost.
  ToolCallStream cut(ToolChoice::kAuto, ToolCallParser::kMistral, "");
  const Assembled c = assemble(cut, {"Sure.\n", "[TOOL_CALLS]get_", "wea"});
  EXPECT_TRUE(c.calls.empty());
  EXPECT_EQ(c.content, "Sure.\n[TOOL_CALLS]get_wea");
}

TEST(ToolCalls, NamedFunctionStreamsItsArgumentsAsWritten) {
  ToolCallStream s(ToolChoice::kNamed, ToolCallParser::kNone, "f");
  const Assembled a = assemble(s, {"{\"a\"", ": 1}"});
  ASSERT_EQ(a.calls.size(), 1u);
  EXPECT_EQ(a.calls[0].name, "f");
  EXPECT_EQ(a.calls[0].arguments, "{\"a\": 1}");
  ToolCallStream empty(ToolChoice::kNamed, ToolCallParser::kNone, "f");
  EXPECT_EQ(assemble(empty, {}).calls.size(), 1u);
}

// The scanner writes what nlohmann's dump() writes for the value, fed a byte at a time, from
// random values printed indented and with every non-ASCII character escaped.
TEST(JsonValueScanner, WritesWhatDumpWrites) {
  using json = nlohmann::ordered_json;
  std::mt19937 rng(11);
  const std::vector<std::string> strings = {"",
                                            "a\"b\\c",
                                            "tab\there\nline",
                                            "\x01\x1f\x7f",
                                            "caf\xC3\xA9",
                                            "\xE2\x82\xAC \xF0\x9F\x98\x80",
                                            "/"};
  std::function<json(int)> value = [&](int depth) -> json {
    switch (rng() % (depth > 3 ? 5 : 7)) {
      case 0:
        return nullptr;
      case 1:
        return rng() % 2 == 0;
      case 2:
        return static_cast<int64_t>(rng()) - (1LL << 31);
      case 3:
        return std::ldexp(static_cast<double>(rng()), -static_cast<int>(rng() % 40));
      case 4:
        return strings[rng() % strings.size()];
      case 5: {
        json a = json::array();
        for (uint32_t k = rng() % 4; k > 0; --k) a.push_back(value(depth + 1));
        return a;
      }
      default: {
        json o = json::object();
        for (uint32_t k = rng() % 4; k > 0; --k)
          o["k" + std::to_string(k) + strings[rng() % strings.size()]] = value(depth + 1);
        return o;
      }
    }
  };
  for (int trial = 0; trial < 300; ++trial) {
    json v = json::object({{"v", value(0)}});
    for (const std::string& text : {v.dump(), v.dump(2), v.dump(1, '\t', true)}) {
      JsonValueScanner scanner(JsonValueScanner::Mode::kCompact);
      std::string out;
      JsonValueScanner::Status status = JsonValueScanner::Status::kMore;
      for (size_t i = 0; i < text.size(); ++i) {
        ASSERT_EQ(status, JsonValueScanner::Status::kMore) << text;
        status = scanner.feed(text[i], out);
      }
      EXPECT_EQ(status, JsonValueScanner::Status::kDone) << text;
      EXPECT_EQ(out, v.dump()) << text;
    }
  }
  // An integer past 64 bits keeps its digits (nlohmann would print it as a double, 1.23e+29).
  {
    const std::string text = R"({"n": 123456789012345678901234567890, "m": -98765432109876543210})";
    JsonValueScanner scanner(JsonValueScanner::Mode::kCompact);
    std::string out;
    JsonValueScanner::Status status = JsonValueScanner::Status::kMore;
    for (char c : text) status = scanner.feed(c, out);
    EXPECT_EQ(status, JsonValueScanner::Status::kDone);
    EXPECT_EQ(out, R"({"n":123456789012345678901234567890,"m":-98765432109876543210})");
  }
  // What nlohmann refuses, the scanner refuses.
  for (const std::string bad :
       {"{\"a\": 01}", "{\"a\": \"\\ud800\"}", "{\"a\": \"\xC0\xAF\"}", "{\"a\": [1,]}",
        "{\"a\" 1}", "{\"a\": tru}", "{\"a\": \"\x01\"}", "{\"a\": 1.}", "{\"a\": \"\\x\"}"}) {
    JsonValueScanner scanner(JsonValueScanner::Mode::kCompact);
    std::string out;
    bool error = false;
    for (char c : bad) error = error || scanner.feed(c, out) == JsonValueScanner::Status::kError;
    EXPECT_TRUE(error) << bad;
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

// The schema a forced choice compiles: arguments are always an object (parameters missing, null
// or {} included), and a tool whose parameters refer within themselves ($defs, "#") keeps
// resolving once placed inside the array of calls.
TEST(ToolCalls, ForcedSchemasKeepObjectsAndReferences) {
  using json = nlohmann::ordered_json;
  const json tools = json::parse(R"([
    {"type": "function", "function": {"name": "empty", "parameters": {}}},
    {"type": "function", "function": {"name": "none"}},
    {"type": "function", "function": {"name": "list", "parameters": {"type": "object",
      "$defs": {"N": {"type": "object", "properties": {"next": {"anyOf": [{"type": "null"},
        {"$ref": "#/$defs/N"}]}}, "required": ["next"]}},
      "properties": {"head": {"$ref": "#/$defs/N"}}, "required": ["head"]}}},
    {"type": "function", "function": {"name": "tree", "parameters": {"type": "object",
      "properties": {"kids": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}}}}}])");
  EXPECT_EQ(forced_tool_call_schema(tools, ToolChoice::kNamed, "empty", true),
            json::parse(R"({"type": "object"})"));
  EXPECT_EQ(forced_tool_call_schema(tools, ToolChoice::kNamed, "none", true),
            json::parse(R"({"type": "object"})"));
  const json required = forced_tool_call_schema(tools, ToolChoice::kRequired, "", true);
  ASSERT_TRUE(required.contains("$defs"));
  EXPECT_EQ(required["$defs"]["tool2"]["properties"]["head"]["$ref"], "#/$defs/tool2/$defs/N");
  EXPECT_EQ(required["$defs"]["tool3"]["properties"]["kids"]["items"]["$ref"], "#/$defs/tool3");
  EXPECT_FALSE(required["$defs"].contains("tool0"));  // no references: stays inline
  EXPECT_NO_THROW(structured::json_schema_grammar(required));
  EXPECT_NO_THROW(structured::json_schema_grammar(
      forced_tool_call_schema(tools, ToolChoice::kNamed, "list", false)));
}

// Only references move: a "$ref" key inside data (const, enum, default, examples) is a value,
// and a property may be named like a keyword.
TEST(ToolCalls, ForcedSchemasLeaveDataAlone) {
  using json = nlohmann::ordered_json;
  const json tools = json::parse(R"([{"type": "function", "function": {"name": "f",
    "parameters": {"type": "object", "$defs": {"i": {"type": "integer"}},
      "properties": {"k": {"const": {"$ref": "#/literal"}}, "e": {"enum": [{"$ref": "#"}]},
        "const": {"$ref": "#/$defs/i"}, "x": {"$ref": "#/$defs/i", "default": {"$ref": "#"}}},
      "required": ["k", "x"]}}}])");
  const json required = forced_tool_call_schema(tools, ToolChoice::kRequired, "", true);
  const json& p = required["$defs"]["tool0"]["properties"];
  EXPECT_EQ(p["k"]["const"], json::parse(R"({"$ref": "#/literal"})"));
  EXPECT_EQ(p["e"]["enum"][0], json::parse(R"({"$ref": "#"})"));
  EXPECT_EQ(p["x"]["default"], json::parse(R"({"$ref": "#"})"));
  EXPECT_EQ(p["x"]["$ref"], "#/$defs/tool0/$defs/i");
  EXPECT_EQ(p["const"]["$ref"], "#/$defs/tool0/$defs/i");  // a property named "const"
  const json only_data = json::parse(R"([{"type": "function", "function": {"name": "g",
    "parameters": {"type": "object", "properties": {"k": {"const": {"$ref": "#/x"}}}}}}])");
  EXPECT_FALSE(forced_tool_call_schema(only_data, ToolChoice::kRequired, "", true)
                   .contains("$defs"));  // no reference, stays inline
}

}  // namespace
}  // namespace l2kv::server
