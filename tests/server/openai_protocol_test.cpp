// The OpenAI protocol layer without sockets: every request field, every invalid case's status,
// type and param, and the response shapes.
#include "l2kv/server/openai_protocol.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "l2kv/chat/chat_template.h"
#include "l2kv/structured/grammar_cache.h"
#include "l2kv/structured/grammar_matcher.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv::server {
namespace {

const ServerLimits kLimits{"tiny", 64, 100};

ApiRequest completion(const std::string& body) {
  return parse_completion_request(json::parse(body), kLimits);
}
ApiRequest chat(const std::string& body) {
  return parse_chat_request(json::parse(body), kLimits);
}

// The grammars' vocabulary of kLimits' 100 ids: id c spells printable ASCII character
// 0x20 + c % 95, and id 99 is EOS.
std::shared_ptr<const structured::TokenVocabulary> printable_vocabulary() {
  std::vector<std::string> tokens;
  for (int c = 0; c < 100; ++c) tokens.emplace_back(1, static_cast<char>(0x20 + c % 95));
  return std::make_shared<structured::TokenVocabulary>(tokens, std::vector<int32_t>{99});
}

// Runs `parse` and returns the ApiError it throws.
template <typename F>
ApiError error_of(F parse) {
  try {
    parse();
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "no ApiError thrown";
  return ApiError(0, "");
}

TEST(OpenAiProtocol, CompletionFields) {
  const ApiRequest r = completion(R"({
    "model": "tiny", "prompt": "hello", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
    "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "presence_penalty": 0.5,
    "frequency_penalty": -0.5, "seed": 42, "n": 3, "stop": ["a", "b"], "stop_token_ids": [1, 2],
    "ignore_eos": true, "min_tokens": 2, "logprobs": 3, "stream": true,
    "stream_options": {"include_usage": true}, "skip_special_tokens": false, "echo": true})");
  EXPECT_EQ(r.endpoint, Endpoint::kCompletions);
  EXPECT_EQ(r.model, "tiny");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].text, "hello");
  EXPECT_FALSE(r.prompts[0].is_ids);
  EXPECT_EQ(r.params.max_tokens, 7);
  EXPECT_TRUE(r.max_tokens_given);
  EXPECT_FLOAT_EQ(r.params.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.params.top_p, 0.9f);
  EXPECT_EQ(r.params.top_k, 5);
  EXPECT_FLOAT_EQ(r.params.min_p, 0.1f);
  EXPECT_FLOAT_EQ(r.params.repetition_penalty, 1.1f);
  EXPECT_FLOAT_EQ(r.params.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(r.params.frequency_penalty, -0.5f);
  EXPECT_EQ(r.params.seed, 42u);
  EXPECT_EQ(r.n, 3);
  EXPECT_EQ(r.params.stop, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r.params.stop_token_ids, (std::vector<int32_t>{1, 2}));
  EXPECT_TRUE(r.params.ignore_eos);
  EXPECT_EQ(r.params.min_tokens, 2);
  EXPECT_EQ(r.params.logprobs, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_FALSE(r.params.skip_special_tokens);
  EXPECT_TRUE(r.echo);
}

TEST(OpenAiProtocol, PromptShapes) {
  EXPECT_EQ(completion(R"({"prompt": ["a", "b"]})").prompts.size(), 2u);
  const ApiRequest ids = completion(R"({"prompt": [1, 2, 3]})");
  ASSERT_EQ(ids.prompts.size(), 1u);
  EXPECT_TRUE(ids.prompts[0].is_ids);
  EXPECT_EQ(ids.prompts[0].ids, (std::vector<int32_t>{1, 2, 3}));
  const ApiRequest lists = completion(R"({"prompt": [[1], [2, 3]]})");
  ASSERT_EQ(lists.prompts.size(), 2u);
  EXPECT_EQ(lists.prompts[1].ids, (std::vector<int32_t>{2, 3}));
  // Defaults and the newer max_completion_tokens; stop as a string; nulls read as absent.
  const ApiRequest d =
      completion(R"({"prompt": "x", "max_completion_tokens": 9, "stop": "z", "seed": null})");
  EXPECT_EQ(d.params.max_tokens, 9);
  EXPECT_EQ(d.params.stop, (std::vector<std::string>{"z"}));
  EXPECT_FALSE(d.params.seed.has_value());
  EXPECT_EQ(d.n, 1);
  EXPECT_FALSE(d.stream);
  EXPECT_EQ(d.params.logprobs, -1);
}

TEST(OpenAiProtocol, ChatFields) {
  const ApiRequest r = chat(R"({
    "model": "tiny", "messages": [{"role": "system", "content": "s"},
                                  {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                  {"role": "assistant", "content": "a", "tool_calls": [],
                                   "refusal": null},
                                  {"role": "developer", "content": "d", "name": "ops"}],
    "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
    "user": "u1", "metadata": {"k": "v"}, "store": false, "logit_bias": {"7": 2.5, "3": -100},
    "logprobs": true, "top_logprobs": 2})");
  EXPECT_EQ(r.endpoint, Endpoint::kChatCompletions);
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[1]["content"], "hi");
  // What the template sees: role and content (and name), developer as system, nothing else.
  EXPECT_EQ(r.messages[2], json({{"role", "assistant"}, {"content", "a"}}));
  EXPECT_EQ(r.messages[3], json({{"role", "system"}, {"content", "d"}, {"name", "ops"}}));
  EXPECT_EQ(r.params.logit_bias, (std::vector<std::pair<int32_t, float>>{{3, -100.f}, {7, 2.5f}}));
  EXPECT_EQ(r.params.logprobs, 2);
  EXPECT_FALSE(r.max_tokens_given);
  EXPECT_EQ(
      chat(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true})").params.logprobs,
      0);
}

struct BadCase {
  const char* body;
  int status;
  const char* param;
};

TEST(OpenAiProtocol, InvalidCompletions) {
  const BadCase cases[] = {
      {R"([1, 2])", 400, ""},
      {R"({})", 400, "prompt"},
      {R"({"prompt": 5})", 400, "prompt"},
      {R"({"prompt": []})", 400, "prompt"},
      {R"({"prompt": [1, "a"]})", 400, "prompt"},
      {R"({"prompt": [1, 100]})", 400, "prompt"},
      {R"({"prompt": [-1]})", 400, "prompt"},
      {R"({"prompt": [[]]})", 400, "prompt"},
      {R"({"prompt": "x", "model": "other"})", 404, "model"},
      {R"({"prompt": "x", "model": 3})", 400, "model"},
      {R"({"prompt": "x", "temperature": "hot"})", 400, "temperature"},
      {R"({"prompt": "x", "temperature": -1})", 400, "temperature"},
      {R"({"prompt": "x", "top_p": 0})", 400, "top_p"},
      {R"({"prompt": "x", "top_p": 1.5})", 400, "top_p"},
      {R"({"prompt": "x", "top_k": -2})", 400, "top_k"},
      {R"({"prompt": "x", "top_k": 1.5})", 400, "top_k"},
      {R"({"prompt": "x", "min_p": 2})", 400, "min_p"},
      {R"({"prompt": "x", "repetition_penalty": 0})", 400, "repetition_penalty"},
      {R"({"prompt": "x", "presence_penalty": 3})", 400, "presence_penalty"},
      {R"({"prompt": "x", "frequency_penalty": -3})", 400, "frequency_penalty"},
      {R"({"prompt": "x", "max_tokens": 0})", 400, "max_tokens"},
      {R"({"prompt": "x", "max_tokens": "9"})", 400, "max_tokens"},
      {R"({"prompt": "x", "max_completion_tokens": -5})", 400, "max_completion_tokens"},
      {R"({"prompt": "x", "min_tokens": 9, "max_tokens": 3})", 400, "min_tokens"},
      {R"({"prompt": "x", "n": 0})", 400, "n"},
      {R"({"prompt": "x", "n": 17})", 400, "n"},
      {R"({"prompt": "x", "stop": 3})", 400, "stop"},
      {R"({"prompt": "x", "stop": [""]})", 400, "stop"},
      {R"({"prompt": "x", "stop_token_ids": [1000]})", 400, "stop_token_ids"},
      {R"({"prompt": "x", "logprobs": 21})", 400, "logprobs"},
      {R"({"prompt": "x", "logprobs": true})", 400, "logprobs"},
      {R"({"prompt": "x", "stream": "yes"})", 400, "stream"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", 400, "stream_options"},
      {R"({"prompt": "x", "echo": 1})", 400, "echo"},
      {R"({"prompt": "x", "seed": "s"})", 400, "seed"},
      {R"({"prompt": "x", "ignore_eos": "no"})", 400, "ignore_eos"},
  };
  for (const BadCase& c : cases) {
    const ApiError e = error_of([&] { completion(c.body); });
    EXPECT_EQ(e.status, c.status) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
    EXPECT_FALSE(e.message.empty()) << c.body;
    const json j = e.to_json();
    ASSERT_TRUE(j.contains("error")) << c.body;
    EXPECT_EQ(j["error"]["type"],
              c.status == 404 ? "invalid_request_error" : "invalid_request_error");
    EXPECT_TRUE(j["error"].contains("message") && j["error"].contains("param") &&
                j["error"].contains("code"));
  }
  EXPECT_NE(error_of([] { completion(R"({"prompt": "x", "n": 17})"); }).message.find("16"),
            std::string::npos);
}

TEST(OpenAiProtocol, InvalidChats) {
  const BadCase cases[] = {
      {R"({})", 400, "messages"},
      {R"({"messages": []})", 400, "messages"},
      {R"({"messages": "hi"})", 400, "messages"},
      {R"({"messages": [3]})", 400, "messages"},
      {R"({"messages": [{"content": "x"}]})", 400, "messages"},
      {R"({"messages": [{"role": "user"}]})", 400, "messages"},
      {R"({"messages": [{"role": "user", "content": 5}]})", 400, "messages"},
      {R"({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})", 400, "messages"},
      {R"({"messages": [{"role": "user", "content": "x"}], "tools": {}})", 400, "tools"},
      {R"({"messages": [{"role": "wizard", "content": "x"}]})", 400, "messages"},
      {R"({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})", 400,
       "top_logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": 2})", 400, "logprobs"},
      {R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true,
           "top_logprobs": 99})",
       400, "top_logprobs"},
  };
  for (const BadCase& c : cases) {
    const ApiError e = error_of([&] { chat(c.body); });
    EXPECT_EQ(e.status, c.status) << c.body;
    EXPECT_EQ(e.param, c.param) << c.body;
  }
}

// Item by item: every field l2kv does not implement is a 400 naming it, unless its value is
// what l2kv does anyway; unknown names (typos) too; hints are accepted.
TEST(OpenAiProtocol, RefusesFieldsItDoesNotImplement) {
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  const std::vector<std::pair<std::string, std::string>> chat_refused = {
      {R"("response_format": {"type": "json_object"})", "response_format"},
      {R"("response_format": {"type": "json_schema", "json_schema": {"name": "a"}})",
       "response_format"},
      {R"("tools": {})", "tools"},
      {R"("tool_choice": "auto")", "tool_choice"},
      {R"("tool_choice": {"type": "function", "function": {"name": "f"}})", "tool_choice"},
      {R"("functions": [{"name": "f"}])", "functions"},
      {R"("function_call": "auto")", "function_call"},
      {R"("modalities": ["text", "audio"])", "modalities"},
      {R"("audio": {"voice": "alloy", "format": "wav"})", "audio"},
      {R"("prediction": {"type": "content", "content": "x"})", "prediction"},
      {R"("reasoning_effort": "low")", "reasoning_effort"},
      {R"("verbosity": "low")", "verbosity"},
      {R"("web_search_options": {})", "web_search_options"},
      {R"("service_tier": "flex")", "service_tier"},
      {R"("use_beam_search": true)", "use_beam_search"},
      {R"("length_penalty": 0.5)", "length_penalty"},
      {R"("spaces_between_special_tokens": 1)", "spaces_between_special_tokens"},
      {R"("store": true)", "store"},
      {R"("user": 5)", "user"},
      {R"("user": ["u"])", "user"},
      {R"("metadata": 5)", "metadata"},
      {R"("metadata": {"a": 1})", "metadata"},
      {R"("safety_identifier": {})", "safety_identifier"},
      {R"("prompt_logprobs": 21)", "prompt_logprobs"},
      {R"("bad_words": ["x"])", "bad_words"},
      {R"("continue_final_message": true)", "continue_final_message"},
      {R"("echo": true)", "echo"},
      {R"("documents": [{"text": "d"}])", "documents"},
      {R"("chat_template": "{{ x }}")", "chat_template"},
      {R"("mm_processor_kwargs": {})", "mm_processor_kwargs"},
      {R"("guided_json": {"type": "object"})", "guided_json"},
      {R"("guided_regex": "a+")", "guided_regex"},
      {R"("guided_choice": ["a"])", "guided_choice"},
      {R"("guided_grammar": "root ::= x")", "guided_grammar"},
      {R"("guided_decoding_backend": "xgrammar")", "guided_decoding_backend"},
      {R"("guided_whitespace_pattern": " ")", "guided_whitespace_pattern"},
      {R"("structural_tag": "{}")", "structural_tag"},
      {R"("structured_outputs": {"regex": "a"})", "structured_outputs"},
      {R"("priority": 5)", "priority"},
      {R"("request_id": "r1")", "request_id"},
      {R"("logits_processors": ["x"])", "logits_processors"},
      {R"("return_tokens_as_token_ids": true)", "return_tokens_as_token_ids"},
      {R"("return_token_ids": true)", "return_token_ids"},
      {R"("cache_salt": "")", "cache_salt"},
      {R"("cache_salt": 5)", "cache_salt"},
      {R"("kv_transfer_params": {})", "kv_transfer_params"},
      {R"("vllm_xargs": {})", "vllm_xargs"},
      {R"("temprature": 0.5)", "temprature"},  // a typo
      {R"("prompt": "x")", "prompt"},          // the other endpoint's field
      {R"("best_of": 2)", "best_of"},
      {R"("suffix": "x")", "suffix"},
      {R"("stream": true, "stream_options": {"continuous_usage_stats": true})", "stream_options"},
  };
  for (const auto& [fields, param] : chat_refused) {
    const std::string body = "{" + msgs + ", " + fields + "}";
    const ApiError e = error_of([&] { chat(body); });
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body;
    EXPECT_NE(e.message.find(param), std::string::npos) << body << ": " << e.message;
  }
  const std::vector<std::pair<std::string, std::string>> completion_refused = {
      {R"("response_format": {"type": "json_object"})", "response_format"},
      {R"("suffix": "x")", "suffix"},
      {R"("messages": [])", "messages"},
      {R"("tools": [])", "tools"},
      {R"("top_logprobs": 2)", "top_logprobs"},
      {R"("metadata": {})", "metadata"},
      {R"("guided_regex": "a+")", "guided_regex"},
      {R"("max_token": 5)", "max_token"},
  };
  for (const auto& [fields, param] : completion_refused) {
    const std::string body = R"({"prompt": "x", )" + fields + "}";
    const ApiError e = error_of([&] { completion(body); });
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body;
  }
  // Hints, nulls and the values l2kv honours anyway are accepted.
  EXPECT_NO_THROW(chat("{" + msgs + R"(, "user": "u", "metadata": {"a": "b"}, "store": false,
      "spaces_between_special_tokens": false,
      "safety_identifier": "s", "prompt_cache_key": "k", "service_tier": "auto",
      "modalities": ["text"], "use_beam_search": false, "length_penalty": 1.0,
      "include_stop_str_in_output": false, "add_generation_prompt": true, "echo": false,
      "priority": 0, "guided_json": null, "tools": null})"));
  // A null of an unknown field is still an unknown field.
  EXPECT_EQ(error_of([&] { chat("{" + msgs + R"(, "temprature": null})"); }).param, "temprature");
}

// Structured outputs: each form compiles to a grammar (cached per constraint text), and what
// cannot be compiled or combined is a 400 naming the field and the keyword.
TEST(OpenAiProtocol, StructuredOutputs) {
  structured::GrammarCache cache(printable_vocabulary());
  ServerLimits limits = kLimits;
  limits.grammars = &cache;
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  auto chat_with = [&](const std::string& fields) {
    return parse_chat_request(json::parse("{" + msgs + ", " + fields + "}"), limits);
  };
  auto accepts = [](const ApiRequest& r, const std::string& text) {
    structured::GrammarMatcher m(r.grammar);
    return m.accept_bytes(text) && m.accepting();
  };
  const std::string schema =
      R"({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})";
  const ApiRequest r = chat_with(R"("response_format": {"type": "json_schema", "json_schema":
      {"name": "n", "strict": true, "schema": )" +
                                 schema + "}}");
  ASSERT_TRUE(r.grammar);
  EXPECT_TRUE(accepts(r, R"({"a": 5})"));
  EXPECT_FALSE(accepts(r, R"({"b": 5})"));
  // The same schema again is the same compiled grammar.
  EXPECT_EQ(chat_with(R"("structured_outputs": {"json": )" + schema + "}").grammar, r.grammar);
  EXPECT_EQ(cache.compilations(), 1);
  EXPECT_TRUE(accepts(chat_with(R"("response_format": {"type": "json_object"})"), "{}"));
  EXPECT_TRUE(accepts(chat_with(R"("structured_outputs": {"regex": "[0-9]{2}"})"), "42"));
  EXPECT_TRUE(accepts(chat_with(R"("structured_outputs": {"choice": ["yes", "no"]})"), "no"));
  EXPECT_TRUE(accepts(chat_with(R"("guided_choice": ["yes", "no"])"), "yes"));
  EXPECT_TRUE(accepts(
      chat_with(R"("structured_outputs": {"grammar": "root ::= \"a\" [0-9]+ | \"b\""})"), "a42"));
  EXPECT_TRUE(accepts(chat_with(R"("guided_grammar": "root ::= \"x\"{2}")"), "xx"));
  EXPECT_TRUE(
      accepts(parse_completion_request(
                  json::parse(R"({"prompt": "x", "guided_json": "{\"type\": \"null\"}"})"), limits),
              "null"));
  EXPECT_FALSE(chat_with(R"("response_format": {"type": "text"})").grammar);
  EXPECT_FALSE(chat("{" + msgs + "}").grammar);

  struct Bad {
    std::string fields, param, words;
  };
  const std::vector<Bad> bad = {
      {R"("response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema":
          {"type": "object", "patternProperties": {}}}})",
       "response_format", "patternProperties"},
      {R"("response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema":
          {"type": "string", "format": "hostname"}}})",
       "response_format", "hostname"},
      {R"("response_format": {"type": "json_schema", "json_schema": {"name": "n"}})",
       "response_format", "schema"},
      {R"("response_format": {"type": "yaml"})", "response_format", "yaml"},
      {R"("structured_outputs": {"regex": "(a)\\1"})", "structured_outputs", "backreferences"},
      {R"("structured_outputs": {"grammar": "root ::= x"})", "structured_outputs",
       "the rule 'x' is not defined"},
      {R"("structured_outputs": {"structural_tag": "{}"})", "structured_outputs", "structural_tag"},
      {R"("structured_outputs": {"choice": []})", "structured_outputs", "choice"},
      {R"("structured_outputs": {"regex": "a", "choice": ["a"]})", "structured_outputs",
       "Only one"},
      {R"("response_format": {"type": "json_object"}, "guided_regex": "a")", "guided_regex",
       "Only one"},
  };
  for (const Bad& b : bad) {
    const ApiError e = error_of([&] { chat_with(b.fields); });
    EXPECT_EQ(e.status, 400) << b.fields;
    EXPECT_EQ(e.param, b.param) << b.fields;
    EXPECT_NE(e.message.find(b.words), std::string::npos) << b.fields << ": " << e.message;
  }
  // A constrained row's top logprobs hold only allowed tokens: forbidden ones (-inf) are left
  // out rather than written as null.
  SampledToken t;
  t.token = 1;
  t.logprob = -0.1f;
  t.top_logprobs = {{1, -0.1f}, {2, -std::numeric_limits<float>::infinity()}};
  const TokenText text = [](int32_t id) { return std::to_string(id); };
  const json chat_lp = chat_logprobs_json({t}, text);
  EXPECT_EQ(chat_lp["content"][0]["top_logprobs"].size(), 1u);
  EXPECT_EQ(completion_logprobs_json({t}, text, 0)["top_logprobs"][0].size(), 1u);
  // Without a tokenizer (no grammar cache) a constraint is a 400 that says why.
  const ApiError e = error_of([&] { chat("{" + msgs + R"(, "guided_regex": "a"})"); });
  EXPECT_EQ(e.param, "guided_regex");
  EXPECT_NE(e.message.find("tokenizer"), std::string::npos);
}

TEST(OpenAiProtocol, RefusesUnknownRolesAndMalformedMessages) {
  const std::vector<std::string> bad = {
      R"({"role": "wizard", "content": "x"})",
      R"({"role": "function", "content": "42", "name": "f"})",
      R"({"role": "user", "content": "x", "tool_calls": [{"id": "c1", "type": "function",
          "function": {"name": "f", "arguments": "{}"}}]})",
      R"({"role": "assistant", "content": null, "tool_calls": [{"id": "c1"}]})",
      R"({"role": "assistant", "content": null})",
      R"({"role": "user", "content": "x", "audio": {"id": "a"}})",
      R"({"role": "user", "content": "x", "name": 5})",
      R"({"role": "user", "content": [{"type": 5, "text": "x"}]})",
      R"({"role": "tool", "content": "42"})",                          // no tool_call_id
      R"({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
          "function": {"name": "f", "arguments": "{\"city\": "}}]})",  // arguments not JSON
      R"({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
          "function": {"name": "f", "arguments": 5}}]})",  // neither a string nor an object
      R"({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
          "function": {"name": "f", "arguments": null}}]})",
  };
  for (const std::string& m : bad) {
    const std::string body = R"({"messages": [{"role": "user", "content": "hi"}, )" + m + "]}";
    const ApiError e = error_of([&] { chat(body); });
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, "messages") << body;
    EXPECT_NE(e.message.find("messages[1]"), std::string::npos) << e.message;
  }
  EXPECT_NE(error_of([] {
              chat(R"({"messages": [{"role": "wizard", "content": "x"}]})");
            }).message.find("wizard"),
            std::string::npos);
}

// Tools: the list is validated and passed to the template, tool messages reach it too;
// "required" and a named function are forced by a grammar, "auto" needs the server's parser.
TEST(OpenAiProtocol, Tools) {
  structured::GrammarCache cache(printable_vocabulary());
  ServerLimits limits = kLimits;
  limits.grammars = &cache;
  const std::string tools = R"("tools": [{"type": "function", "function": {"name": "get_weather",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
      "required": ["city"]}}}, {"type": "function", "function": {"name": "now"}}])";
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"},
      {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function":
      {"name": "now", "arguments": "{\"tz\": \"UTC\"}"}}]},
      {"role": "tool", "tool_call_id": "c1", "content": "12:00"}])";
  auto chat_with = [&](const std::string& fields, const ServerLimits& l) {
    return parse_chat_request(json::parse("{" + msgs + ", " + tools + fields + "}"), l);
  };
  auto accepts = [](const ApiRequest& r, const std::string& text) {
    structured::GrammarMatcher m(r.grammar);
    return m.accept_bytes(text) && m.accepting();
  };
  const ApiRequest named = chat_with(
      R"(, "tool_choice": {"type": "function", "function": {"name": "get_weather"}})", limits);
  EXPECT_EQ(named.tool_choice, ToolChoice::kNamed);
  EXPECT_EQ(named.tool_name, "get_weather");
  EXPECT_TRUE(accepts(named, R"({"city": "Paris"})"));
  EXPECT_FALSE(accepts(named, R"({})"));
  ASSERT_EQ(named.tools.size(), 2u);
  EXPECT_EQ(named.messages[1]["tool_calls"][0]["function"]["arguments"]["tz"], "UTC");
  EXPECT_EQ(named.messages[2]["role"], "tool");
  EXPECT_EQ(named.messages[2]["tool_call_id"], "c1");

  const ApiRequest required = chat_with(R"(, "tool_choice": "required")", limits);
  EXPECT_TRUE(accepts(required, R"([{"name": "now", "parameters": {}}])"));
  EXPECT_TRUE(accepts(required, R"([{"name": "get_weather", "parameters": {"city": "a"}},
      {"name": "now", "parameters": {}}])"));
  EXPECT_FALSE(accepts(required, R"([])"));
  EXPECT_FALSE(accepts(required, R"([{"name": "other", "parameters": {}}])"));
  const ApiRequest single =
      chat_with(R"(, "tool_choice": "required", "parallel_tool_calls": false)", limits);
  EXPECT_FALSE(accepts(single, R"([{"name": "now", "parameters": {}}, {"name": "now",
      "parameters": {}}])"));

  EXPECT_FALSE(chat_with(R"(, "tool_choice": "none")", limits).grammar);
  // "auto" (the default with tools) needs a parser.
  EXPECT_EQ(error_of([&] { chat_with("", limits); }).param, "tool_choice");
  ServerLimits hermes = limits;
  hermes.tool_call_parser = ToolCallParser::kHermes;
  const ApiRequest automatic = chat_with("", hermes);
  EXPECT_EQ(automatic.tool_choice, ToolChoice::kAuto);
  EXPECT_FALSE(automatic.grammar);

  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"(, "tool_choice": {"type": "function", "function": {"name": "nope"}})", "tool_choice"},
      {R"(, "tool_choice": "sometimes")", "tool_choice"},
      {R"(, "tool_choice": "required", "response_format": {"type": "json_object"})", "tool_choice"},
  };
  for (const auto& [fields, param] : bad) {
    const ApiError e = error_of([&] { chat_with(fields, limits); });
    EXPECT_EQ(e.status, 400) << fields;
    EXPECT_EQ(e.param, param) << fields;
  }
  const std::vector<std::string> bad_tools = {
      R"("tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function",
          "function": {"name": "f"}}])",
      R"("tools": [{"type": "retrieval"}])",
      R"("tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}])",
      R"("tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}])",
      R"("tools": [{"type": "function", "function": {"name": "f", "parameters":
          {"type": "object", "not": {}}}}], "tool_choice": "required")",
  };
  for (const std::string& t : bad_tools) {
    const std::string body = R"({"messages": [{"role": "user", "content": "x"}], )" + t + "}";
    const ApiError e = error_of([&] { parse_chat_request(json::parse(body), limits); });
    EXPECT_EQ(e.status, 400) << t;
    EXPECT_EQ(e.param, "tools") << t;
  }
  // A call's arguments are an object: parameters describing anything else are refused, and an
  // empty parameters schema takes objects only.
  const std::string string_tool = R"({"messages": [{"role": "user", "content": "x"}],
      "tool_choice": "required", "tools": [{"type": "function", "function": {"name": "s",
      "parameters": {"type": "string"}}}]})";
  EXPECT_EQ(error_of([&] { parse_chat_request(json::parse(string_tool), limits); }).param, "tools");
  const ApiRequest empty = parse_chat_request(
      json::parse(R"({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type":
      "function", "function": {"name": "e"}}, "tools": [{"type": "function", "function":
      {"name": "e", "parameters": {}}}]})"),
      limits);
  EXPECT_TRUE(accepts(empty, "{}"));
  EXPECT_FALSE(accepts(empty, "1031"));
  EXPECT_FALSE(accepts(empty, R"("text")"));
}

TEST(OpenAiProtocol, LogitBias) {
  const ApiRequest r =
      completion(R"({"prompt": "x", "logit_bias": {"99": 100, "0": -100, "42": 0.5}})");
  EXPECT_EQ(r.params.logit_bias,
            (std::vector<std::pair<int32_t, float>>{{0, -100.f}, {42, 0.5f}, {99, 100.f}}));
  EXPECT_TRUE(completion(R"({"prompt": "x", "logit_bias": {}})").params.logit_bias.empty());
  EXPECT_TRUE(completion(R"({"prompt": "x", "logit_bias": null})").params.logit_bias.empty());
  std::string many = R"({"prompt": "x", "logit_bias": {)";
  for (int i = 0; i <= kMaxLogitBias; ++i)
    many += (i ? ", \"" : "\"") + std::to_string(i) + "\": 1";
  many += "}}";
  const std::vector<std::string> bad = {
      R"({"prompt": "x", "logit_bias": {"100": 1}})",  // vocab is 100
      R"({"prompt": "x", "logit_bias": {"-1": 1}})",
      R"({"prompt": "x", "logit_bias": {"abc": 1}})",
      R"({"prompt": "x", "logit_bias": {"1.5": 1}})",
      R"({"prompt": "x", "logit_bias": {"": 1}})",
      R"({"prompt": "x", "logit_bias": {"99999999999999999999": 1}})",
      R"({"prompt": "x", "logit_bias": {"5": 100.5}})",
      R"({"prompt": "x", "logit_bias": {"5": -101}})",
      R"({"prompt": "x", "logit_bias": {"5": 1e300}})",
      R"({"prompt": "x", "logit_bias": {"5": "high"}})",
      R"({"prompt": "x", "logit_bias": {"5": 1, "05": 2}})",
      R"({"prompt": "x", "logit_bias": [5, 1]})",
      many,
  };
  for (const std::string& body : bad) {
    const ApiError e = error_of([&] { completion(body); });
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, "logit_bias") << body << ": " << e.message;
  }
}

// A request starts from the model's sampling defaults (generation_config.json) and its own
// fields replace them.
TEST(OpenAiProtocol, SamplingDefaultsFromTheModel) {
  ServerLimits limits = kLimits;
  limits.default_sampling.temperature = 0.7f;
  limits.default_sampling.top_p = 0.8f;
  limits.default_sampling.top_k = 20;
  limits.default_sampling.repetition_penalty = 1.05f;
  const ApiRequest plain = parse_completion_request(json::parse(R"({"prompt": "x"})"), limits);
  EXPECT_EQ(plain.params.temperature, 0.7f);
  EXPECT_EQ(plain.params.top_p, 0.8f);
  EXPECT_EQ(plain.params.top_k, 20);
  EXPECT_EQ(plain.params.repetition_penalty, 1.05f);
  EXPECT_EQ(plain.params.min_p, 0.f);
  const ApiRequest own = parse_chat_request(
      json::parse(R"({"messages": [{"role": "user", "content": "x"}], "temperature": 0,
          "top_k": -1, "repetition_penalty": 1})"),
      limits);
  EXPECT_TRUE(own.params.greedy());
  EXPECT_EQ(own.params.top_k, -1);
  EXPECT_EQ(own.params.repetition_penalty, 1.f);
  EXPECT_EQ(own.params.top_p, 0.8f);
}

// JSON nested past kMaxJsonDepth is a 400 while it is parsed, in the body and in the JSON text
// a request carries in strings (a schema, a tool call's arguments): copying or compiling a
// value 100,000 levels deep recursed off the end of the thread's stack.
TEST(OpenAiProtocol, DeepNestingIsRefused) {
  const auto nested = [](int depth) {
    return std::string(static_cast<size_t>(depth), '[') +
           std::string(static_cast<size_t>(depth), ']');
  };
  const std::string deep = nested(100000);
  for (const std::string& body : {R"({"prompt": "x", "user": )" + deep + "}",
                                  R"({"prompt": "x", "guided_json": {"const": )" + deep + "}}"}) {
    const ApiError e = error_of([&] { parse_request_body(body); });
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(e.message.find("deeper than 512"), std::string::npos) << e.message;
  }
  EXPECT_NO_THROW(
      parse_request_body(R"({"prompt": "x", "user": )" + nested(kMaxJsonDepth - 1) + "}"));
  // A schema given as a string.
  const std::string schema_text = json(R"({"const": )" + deep + "}").dump();
  ApiError e =
      error_of([&] { completion(R"({"prompt": "x", "guided_json": )" + schema_text + "}"); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "guided_json") << e.message;
  // A tool call's arguments in a message.
  const std::string arguments = json(deep).dump();
  e = error_of([&] {
    chat(R"({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
        "function": {"name": "f", "arguments": )" +
         arguments + "}}]}]}");
  });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "messages") << e.message;
}

// A number that overflows a double is a 400 (it was a 500 from the JSON library's
// out_of_range); tiny temperatures parse and are greedy.
TEST(OpenAiProtocol, NumbersOutOfRange) {
  for (const char* body :
       {R"({"prompt": "x", "temperature": 1e400})", R"({"prompt": "x", "max_tokens": -1e400})",
        R"({"prompt": "x", "user": {"deep": [1, 2, 1e999]}})", R"({"prompt": )", ""}) {
    const ApiError e = error_of([&] { parse_request_body(body); });
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.type, "invalid_request_error") << body;
  }
  EXPECT_NE(error_of([] { parse_request_body(R"({"temperature": 1e400})"); }).message.find("range"),
            std::string::npos);
  EXPECT_TRUE(parse_request_body(R"({"a": 1e-400})")["a"] == 0.0);
  EXPECT_TRUE(completion(R"({"prompt": "x", "temperature": 1e-38})").params.greedy());
  EXPECT_TRUE(completion(R"({"prompt": "x", "temperature": 1e-400})").params.greedy());
  EXPECT_FALSE(completion(R"({"prompt": "x", "temperature": 1e-5})").params.greedy());
  const ApiError e = error_of([] { completion(R"({"prompt": "x", "temperature": 1e300})"); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "temperature");
  // Integers beyond 64 bits are out of range (not wrapped to negative, not "not an integer").
  for (const auto& [fields, param] : std::vector<std::pair<std::string, std::string>>{
           {R"("max_tokens": 9223372036854775808)", "max_tokens"},
           {R"("seed": 18446744073709551615)", "seed"},
           {R"("max_tokens": 1e30)", "max_tokens"},
           {R"("top_k": -1e20)", "top_k"}}) {
    const ApiError big = error_of([&] { completion(R"({"prompt": "x", )" + fields + "}"); });
    EXPECT_EQ(big.param, param) << fields;
    EXPECT_NE(big.message.find("out of range"), std::string::npos) << fields << ": " << big.message;
  }
  EXPECT_EQ(completion(R"({"prompt": "x", "seed": 9223372036854775807})").params.seed,
            uint64_t{9223372036854775807});
}

TEST(OpenAiProtocol, MaxModelLen) {
  ApiRequest r = completion(R"({"prompt": [1, 2], "max_tokens": 10})");
  EXPECT_EQ(resolve_max_tokens(r, 54, 64), 10);
  ApiError e = error_of([&] { resolve_max_tokens(r, 55, 64); });
  EXPECT_EQ(e.status, 400);
  EXPECT_NE(e.message.find("maximum context length is 64"), std::string::npos) << e.message;
  e = error_of([&] { resolve_max_tokens(r, 64, 64); });
  EXPECT_EQ(e.status, 400);
  e = error_of([&] { resolve_max_tokens(r, 100, 64); });
  EXPECT_EQ(e.param, "prompt");
  // Unset max_tokens: 16 for completions (capped by what fits), everything that fits for chat.
  r = completion(R"({"prompt": [1]})");
  EXPECT_EQ(resolve_max_tokens(r, 10, 64), 16);
  EXPECT_EQ(resolve_max_tokens(r, 60, 64), 4);
  r = chat(R"({"messages": [{"role": "user", "content": "x"}]})");
  EXPECT_EQ(resolve_max_tokens(r, 10, 64), 54);
  EXPECT_EQ(resolve_max_tokens(r, 10, 64, 20), 20);  // the model's max_new_tokens, at most
  EXPECT_EQ(resolve_max_tokens(r, 50, 64, 20), 14);
  // A max_tokens past 32 bits is named as sent, not as the 2^31 - 1 it would have been cut to.
  e = error_of([&] { completion(R"({"prompt": [1], "max_tokens": 9223372036854775807})"); });
  EXPECT_EQ(e.param, "max_tokens");
  EXPECT_NE(e.message.find("9223372036854775807"), std::string::npos) << e.message;
  // min_tokens raises an unset max_tokens up to what fits, and no further: a 400, not a quiet
  // cap at the context's end.
  r = completion(R"({"prompt": [1], "min_tokens": 20})");
  EXPECT_EQ(resolve_max_tokens(r, 10, 64), 20);
  EXPECT_EQ(resolve_max_tokens(r, 44, 64), 20);
  e = error_of([&] { resolve_max_tokens(r, 45, 64); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "min_tokens") << e.message;
  r = chat(R"({"messages": [{"role": "user", "content": "x"}], "min_tokens": 2147483647})");
  EXPECT_EQ(error_of([&] { resolve_max_tokens(r, 10, 64); }).param, "min_tokens");
}

// Sampling floats keep their side of every bound SamplingParams checks: a value just past one
// is refused, not rounded onto it, and a tiny positive one is not rounded to zero.
TEST(OpenAiProtocol, SamplingFloatsAreNotRoundedOntoTheirBounds) {
  for (const auto& [field, value] : std::initializer_list<std::pair<const char*, const char*>>{
           {"top_p", "1.00000001"},
           {"min_p", "1.00000001"},
           {"min_p", "-1e-300"},
           {"frequency_penalty", "2.0000001"},
           {"presence_penalty", "-2.0000001"},
           {"temperature", "-1e-300"},
       }) {
    const std::string body = std::string(R"({"prompt": "x", ")") + field + R"(": )" + value + "}";
    const ApiError e = error_of([&] { completion(body); });
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, field) << body << ": " << e.message;
  }
  const ApiRequest tiny = completion(R"({"prompt": "x", "top_p": 1e-300, "temperature": 1e-300})");
  EXPECT_GT(tiny.params.top_p, 0.f);
  EXPECT_GT(tiny.params.temperature, 0.f);
  const ApiRequest edges = completion(
      R"({"prompt": "x", "top_p": 1, "min_p": 0, "frequency_penalty": 2, "presence_penalty": -2,
          "temperature": 0.7})");
  EXPECT_EQ(edges.params.top_p, 1.f);
  EXPECT_EQ(edges.params.min_p, 0.f);
  EXPECT_EQ(edges.params.frequency_penalty, 2.f);
  EXPECT_EQ(edges.params.presence_penalty, -2.f);
  EXPECT_NEAR(edges.params.temperature, 0.7f, 1e-7f);
}

TEST(OpenAiProtocol, TokenIdPromptsWithoutTokenizer) {
  const ApiRequest ids = completion(R"({"prompt": [[1, 2], [3]]})");
  const auto tokens = tokenize_prompts(ids, nullptr, nullptr);
  ASSERT_EQ(tokens.size(), 2u);
  EXPECT_EQ(tokens[1], (std::vector<int32_t>{3}));
  EXPECT_EQ(
      error_of([] { tokenize_prompts(completion(R"({"prompt": "x"})"), nullptr, nullptr); }).status,
      400);
  EXPECT_EQ(error_of([] {
              tokenize_prompts(chat(R"({"messages": [{"role": "user", "content": "x"}]})"), nullptr,
                               nullptr);
            }).status,
            400);
}

RequestOutput output(std::vector<int32_t> tokens, std::string text, bool finished,
                     FinishReason reason) {
  RequestOutput o;
  o.new_tokens = std::move(tokens);
  o.new_text = std::move(text);
  for (int32_t t : o.new_tokens) o.new_logprobs.push_back({t, -0.5f, {{t, -0.5f}, {7, -1.5f}}});
  o.finished = finished;
  o.finish_reason = reason;
  o.prompt_tokens = 3;
  o.completion_tokens = 2;
  return o;
}

TEST(OpenAiProtocol, CompletionResponseShape) {
  ApiRequest r = completion(R"({"prompt": [1, 2, 3], "logprobs": 1, "n": 2, "echo": true})");
  std::vector<ChoiceOutput> choices(2);
  choices[0].append(output({4}, "ab", false, FinishReason::kNone));
  choices[0].append(output({5}, "c", true, FinishReason::kLength));
  choices[1].append(output({4, 5}, "abc", true, FinishReason::kStop));
  const ResponseHeader h{"cmpl-1", 123, "tiny"};
  const json j = completion_response(h, r, choices, {"P"}, {3}, token_text_for(nullptr));
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["id"], "cmpl-1");
  EXPECT_EQ(j["model"], "tiny");
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][0]["text"], "Pabc");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["finish_reason"], "stop");
  const json& lp = j["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], json::array({"token_id:4", "token_id:5"}));
  EXPECT_EQ(lp["token_logprobs"][0], -0.5);
  EXPECT_EQ(lp["top_logprobs"][0]["token_id:7"], -1.5);
  EXPECT_EQ(lp["text_offset"], json::array({1, 11}));
  EXPECT_EQ(j["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(j["usage"]["completion_tokens"], 4);
  EXPECT_EQ(j["usage"]["total_tokens"], 7);
}

// Completions' text_offset counts characters, not UTF-8 bytes, and top_logprobs always hold the
// sampled token (up to logprobs + 1 entries), as OpenAI and vLLM do.
TEST(OpenAiProtocol, CompletionLogprobsCountCharactersAndNameTheSampledToken) {
  EXPECT_EQ(text_length(""), 0);
  EXPECT_EQ(text_length("ab"), 2);
  EXPECT_EQ(text_length("\xe9\x80\x9a\xe7\x9f\xa5"), 2);  // two CJK characters, six bytes
  EXPECT_EQ(text_length("\xf0\x9f\x98\x80!"), 2);         // an emoji (four bytes) and "!"
  const TokenText text = [](int32_t id) {
    return id == 1 ? std::string("\xe9\x80\x9a\xe7\x9f\xa5") : std::string(" x");
  };
  SampledToken a, b;
  a.token = 1;
  a.logprob = -2.f;
  a.top_logprobs = {{2, -0.5f}};  // the sampled token is not among the most likely
  b.token = 2;
  b.logprob = -0.5f;
  b.top_logprobs = {{2, -0.5f}};
  const json lp = completion_logprobs_json({a, b, a}, text, 3);
  EXPECT_EQ(lp["text_offset"], json::array({3, 5, 7}));
  EXPECT_EQ(lp["top_logprobs"][0].size(), 2u);
  EXPECT_EQ(lp["top_logprobs"][0]["\xe9\x80\x9a\xe7\x9f\xa5"], -2.0);
  EXPECT_EQ(lp["top_logprobs"][1].size(), 1u);  // sampled = most likely: one entry
  EXPECT_EQ(tokens_text_length({1, 2, 1}, text), 6);
  EXPECT_EQ(echo_text_offset("\xe9\x80\x9a", {}, text), 1);
  EXPECT_EQ(echo_text_offset("ignored", {2, 2}, text), 4);
}

// Logprobs' token texts read as inside a text: a SentencePiece "▁the" (Llama 2) keeps its space,
// which decoding it alone drops; byte-level BPE (Llama 3) reads the same either way.
TEST(OpenAiProtocol, TokenTextKeepsTheSpaceOfSentencePieceTokens) {
  for (const char* name : {"llama2", "llama3_1"}) {
    const std::filesystem::path dir = std::filesystem::path(L2KV_TOKENIZER_PACKAGES) /
                                      ("tokenizer-" + std::string(name)) / "models";
    if (!std::filesystem::exists(dir / "tokenizer.json")) {
      ADD_FAILURE() << "missing " << dir << ": run scripts/tokenizer_test_data.sh";
      continue;
    }
    const Tokenizer tok = Tokenizer::from_folder(dir);
    const TokenText text = token_text_for(&tok);
    const std::vector<int32_t> ids = tok.encode("Hello the world", false);
    ASSERT_EQ(ids.size(), 3u) << name;
    EXPECT_EQ(text(ids[1]), " the") << name;
    EXPECT_EQ(text(ids[2]), " world") << name;
    const int32_t alone[1] = {ids[1]};
    if (std::string(name) == "llama2") {
      EXPECT_EQ(tok.decode(alone, false), "the");  // why the anchor is needed
    }
  }
}

TEST(OpenAiProtocol, ChatResponseShape) {
  ApiRequest r = chat(R"({"messages": [{"role": "user", "content": "x"}], "logprobs": true,
                          "top_logprobs": 1})");
  std::vector<ChoiceOutput> choices(1);
  choices[0].append(output({4, 5}, "hi", true, FinishReason::kStop));
  const json j = chat_response({"chatcmpl-1", 1, "tiny"}, r, choices, {3}, [](int32_t id) {
    return id == 4 ? std::string("h") : std::string("i");
  });
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "hi");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  const json& c = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0]["token"], "h");
  EXPECT_EQ(c[0]["bytes"], json::array({104}));
  EXPECT_EQ(c[0]["logprob"], -0.5);
  EXPECT_EQ(c[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(j["usage"]["total_tokens"], 5);
}

// A named function's output is its arguments also when max_tokens cut it (as streamed):
// tool_calls with the partial arguments and finish_reason "length"; one that ended by itself
// finishes with "tool_calls".
TEST(OpenAiProtocol, NamedToolCallCutByMaxTokensStaysACall) {
  structured::GrammarCache cache(printable_vocabulary());
  ServerLimits limits = kLimits;
  limits.grammars = &cache;
  const ApiRequest named = parse_chat_request(
      json::parse(R"({"messages": [{"role": "user", "content": "x"}], "tools": [{"type":
          "function", "function": {"name": "get_weather", "parameters": {"type": "object",
          "properties": {"city": {"type": "string"}}}}}], "tool_choice": {"type": "function",
          "function": {"name": "get_weather"}}})"),
      limits);
  for (const FinishReason end : {FinishReason::kLength, FinishReason::kStop}) {
    std::vector<ChoiceOutput> choices(1);
    choices[0].append(output({4, 5}, R"({"city": "Par)", true, end));
    const json j =
        chat_response({"chatcmpl-1", 1, "tiny"}, named, choices, {3}, token_text_for(nullptr));
    const json& message = j["choices"][0]["message"];
    ASSERT_EQ(message["tool_calls"].size(), 1u) << j.dump();
    EXPECT_EQ(message["tool_calls"][0]["function"]["name"], "get_weather");
    EXPECT_EQ(message["tool_calls"][0]["function"]["arguments"], R"({"city": "Par)");
    EXPECT_EQ(j["choices"][0]["finish_reason"],
              end == FinishReason::kLength ? "length" : "tool_calls");
  }
}

TEST(OpenAiProtocol, StreamingChunks) {
  const ResponseHeader h{"chatcmpl-2", 1, "tiny"};
  const json role = chat_role_chunk(h, 0);
  EXPECT_EQ(role["object"], "chat.completion.chunk");
  EXPECT_EQ(role["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(role["choices"][0]["finish_reason"].is_null());
  const json piece = chat_content_chunk(h, 1, "abc", nullptr);
  EXPECT_EQ(piece["choices"][0]["index"], 1);
  EXPECT_EQ(piece["choices"][0]["delta"]["content"], "abc");
  const json fin = chat_finish_chunk(h, 0, FinishReason::kLength);
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(fin["choices"][0]["delta"].empty());
  EXPECT_TRUE(fin["choices"][0]["stop_reason"].is_null());
  const json text = completion_chunk({"cmpl-3", 1, "tiny"}, 0, "t", FinishReason::kStop, nullptr);
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "t");
  EXPECT_EQ(text["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(text["choices"][0]["stop_reason"].is_null());
  // The last chunk of a choice that met a stop string or token says which (vLLM's stop_reason).
  EXPECT_EQ(
      completion_chunk(h, 0, "", FinishReason::kStop, nullptr, "END")["choices"][0]["stop_reason"],
      "END");
  // A stop token id is a number, as vLLM gives it.
  EXPECT_EQ(chat_finish_chunk(h, 0, FinishReason::kStop,
                              stop_reason_json("128009", 128009))["choices"][0]["stop_reason"],
            128009);
  EXPECT_EQ(stop_reason_json("END", -1), "END");
  EXPECT_TRUE(stop_reason_json("", -1).is_null());
  const json usage = usage_chunk(h, Endpoint::kChatCompletions, 3, 4);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 7);
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(std::string(kSseDone), "data: [DONE]\n\n");
  // A token that ends inside a UTF-8 character still serializes.
  EXPECT_NO_THROW(sse_event(json{{"t", std::string("\xe2\x82")}}));
}

// /tokenize and /detokenize over a tokenizer of one token per printable ASCII character
// (id = code - 32: 0 .. 94), in a model vocabulary of 100 (ids 95 .. 99 have no text).
const Tokenizer& ascii_tokenizer() {
  static const Tokenizer tokenizer = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (int c = 32; c < 127; ++c) vocab[std::string(1, static_cast<char>(c))] = c - 32;
    const nlohmann::json spec = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
    return Tokenizer::from_json(spec.dump());
  }();
  return tokenizer;
}

std::vector<int32_t> ascii_ids(const std::string& text) {
  std::vector<int32_t> ids;
  for (char c : text) ids.push_back(c - 32);
  return ids;
}

TEST(OpenAiProtocol, TokenizeAndDetokenize) {
  const Tokenizer& tok = ascii_tokenizer();
  json r = tokenize_response(json::parse(R"({"model": "tiny", "prompt": "hi there"})"), kLimits,
                             &tok, nullptr);
  EXPECT_EQ(r["count"], 8);
  EXPECT_EQ(r["max_model_len"], 64);
  EXPECT_EQ(r["tokens"].get<std::vector<int32_t>>(), ascii_ids("hi there"));
  EXPECT_TRUE(r["token_strs"].is_null());
  EXPECT_EQ(dump_json(r), dump_json(json{{"count", 8},
                                         {"max_model_len", 64},
                                         {"tokens", ascii_ids("hi there")},
                                         {"token_strs", nullptr}}));  // vLLM's key order
  r = tokenize_response(json::parse(R"({"prompt": "ab", "return_token_strs": true,
                                        "add_special_tokens": false})"),
                        kLimits, &tok, nullptr);
  EXPECT_EQ(r["token_strs"], json::array({"a", "b"}));

  // Chat: the template's rendering, with the generation prompt unless told otherwise.
  const ChatTemplate tmpl(
      "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}",
      "", "");
  r = tokenize_response(json::parse(R"({"messages": [{"role": "user", "content": "yo"}]})"),
                        kLimits, &tok, &tmpl);
  EXPECT_EQ(r["tokens"].get<std::vector<int32_t>>(), ascii_ids("<user>yo<assistant>"));
  r = tokenize_response(json::parse(R"({"messages": [{"role": "user", "content": "yo"}],
                                        "add_generation_prompt": false})"),
                        kLimits, &tok, &tmpl);
  EXPECT_EQ(r["tokens"].get<std::vector<int32_t>>(), ascii_ids("<user>yo"));
  const ChatTemplate thinking(
      "{% if not enable_thinking %}/no_think{% endif %}<{{ messages[0].role }}>", "", "");
  r = tokenize_response(json::parse(R"({"messages": [{"role": "user", "content": "yo"}],
                                        "chat_template_kwargs": {"enable_thinking": false}})"),
                        kLimits, &tok, &thinking);
  EXPECT_EQ(r["tokens"].get<std::vector<int32_t>>(), ascii_ids("/no_think<user>"));

  r = detokenize_response(json::parse(R"({"model": "tiny", "tokens": [72, 73, 0, 33]})"), kLimits,
                          &tok);
  EXPECT_EQ(dump_json(r), R"({"prompt":"hi A"})");
  r = detokenize_response(json::parse(R"({"tokens": []})"), kLimits, &tok);
  EXPECT_EQ(r["prompt"], "");
}

// An ASCII tokenizer whose post-processor adds BOS (id 95), to see add_special_tokens.
const Tokenizer& ascii_tokenizer_with_bos() {
  static const Tokenizer tokenizer = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (int c = 32; c < 127; ++c) vocab[std::string(1, static_cast<char>(c))] = c - 32;
    vocab["<s>"] = 95;
    const nlohmann::json bos = {{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}};
    const nlohmann::json a = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}};
    const nlohmann::json spec = {
        {"added_tokens",
         {{{"id", 95},
           {"content", "<s>"},
           {"single_word", false},
           {"lstrip", false},
           {"rstrip", false},
           {"normalized", false},
           {"special", true}}}},
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
        {"post_processor",
         {{"type", "TemplateProcessing"},
          {"single", {bos, a}},
          {"pair", {bos, a, a}},
          {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {95}}, {"tokens", {"<s>"}}}}}}}}};
    return Tokenizer::from_json(spec.dump());
  }();
  return tokenizer;
}

// A prompt the tokenizer refuses is the request's error: a pre-tokenizer regex that backtracks
// without end on "aaa...a!" reaches PCRE2's match limit, and completions, chat and /tokenize
// answer 400 naming the field (a 500 before).
TEST(OpenAiProtocol, APromptTheTokenizerRefusesIsABadRequest) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int c = 32; c < 127; ++c) vocab[std::string(1, static_cast<char>(c))] = c - 32;
  const nlohmann::json spec = {
      {"pre_tokenizer",
       {{"type", "Split"},
        {"pattern", {{"Regex", "(a|aa)+$"}}},
        {"behavior", "Isolated"},
        {"invert", false}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  const Tokenizer tok = Tokenizer::from_json(spec.dump());
  EXPECT_EQ(tok.encode("aa c", false).size(), 4u);  // the regex works where it ends
  const std::string runaway = std::string(60, 'a') + "!";
  const std::string body = R"({"prompt": ")" + runaway + R"("})";
  ApiError e = error_of([&] { tokenize_prompts(completion(body), &tok, nullptr); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "prompt");
  EXPECT_NE(e.message.find("The prompt could not be tokenized"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("(a|aa)+$"), std::string::npos) << e.message;
  const ChatTemplate tmpl("{% for m in messages %}{{ m.content }}{% endfor %}", "", "");
  e = error_of([&] {
    tokenize_prompts(chat(R"({"messages": [{"role": "user", "content": ")" + runaway + R"("}]})"),
                     &tok, &tmpl);
  });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "messages");
  e = error_of([&] { tokenize_response(json::parse(body), kLimits, &tok, nullptr); });
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.param, "prompt");
}

// vLLM's prompt fields: add_special_tokens, truncate_prompt_tokens (left truncation, -1 = the
// model's length), and on chat add_generation_prompt and chat_template_kwargs (template
// variables); include_stop_str_in_output reaches the sampling parameters.
TEST(OpenAiProtocol, PromptFields) {
  const Tokenizer& tok = ascii_tokenizer_with_bos();
  auto prompt_of = [&](const std::string& body) {
    const auto prompts = tokenize_prompts(completion(body), &tok, nullptr);
    EXPECT_EQ(prompts.size(), 1u);
    return prompts.at(0);
  };
  std::vector<int32_t> with_bos = {95};
  for (const int32_t id : ascii_ids("hello")) with_bos.push_back(id);
  EXPECT_EQ(prompt_of(R"({"prompt": "hello"})"), with_bos);
  EXPECT_EQ(prompt_of(R"({"prompt": "hello", "add_special_tokens": false})"), ascii_ids("hello"));
  EXPECT_EQ(prompt_of(R"({"prompt": "hello", "truncate_prompt_tokens": 3})"), ascii_ids("llo"));
  EXPECT_EQ(prompt_of(R"({"prompt": "hello", "truncate_prompt_tokens": 9})"), with_bos);
  EXPECT_EQ(prompt_of(R"({"prompt": [1, 2, 3, 4, 5, 6], "truncate_prompt_tokens": 4})"),
            (std::vector<int32_t>{3, 4, 5, 6}));
  std::vector<int32_t> long_ids(100);
  for (size_t i = 0; i < long_ids.size(); ++i) long_ids[i] = static_cast<int32_t>(i % 90);
  const auto kept =
      prompt_of(R"({"truncate_prompt_tokens": -1, "prompt": )" + json(long_ids).dump() + "}");
  EXPECT_EQ(kept, std::vector<int32_t>(long_ids.end() - kLimits.max_model_len, long_ids.end()));

  const ChatTemplate tmpl(
      "{% if enable_thinking is defined and not enable_thinking %}/no_think{% endif %}"
      "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
      "{% if add_generation_prompt %}<assistant>{% endif %}",
      "<s>", "");
  auto chat_prompt = [&](const std::string& fields) {
    const ApiRequest r = chat(R"({"messages": [{"role": "user", "content": "yo"}])" + fields + "}");
    return tokenize_prompts(r, &tok, &tmpl).at(0);
  };
  EXPECT_EQ(chat_prompt(""), ascii_ids("<user>yo<assistant>"));
  EXPECT_EQ(chat_prompt(R"(, "add_generation_prompt": false)"), ascii_ids("<user>yo"));
  EXPECT_EQ(chat_prompt(R"(, "chat_template_kwargs": {"enable_thinking": false})"),
            ascii_ids("/no_think<user>yo<assistant>"));
  std::vector<int32_t> chat_bos = {95};
  for (const int32_t id : ascii_ids("<user>yo<assistant>")) chat_bos.push_back(id);
  EXPECT_EQ(chat_prompt(R"(, "add_special_tokens": true)"), chat_bos);
  EXPECT_EQ(chat_prompt(R"(, "truncate_prompt_tokens": 4)"), ascii_ids("ant>"));

  EXPECT_TRUE(completion(R"({"prompt": "x", "include_stop_str_in_output": true})")
                  .params.include_stop_str_in_output);
  EXPECT_FALSE(completion(R"({"prompt": "x"})").params.include_stop_str_in_output);
  EXPECT_EQ(completion(R"({"prompt": "x", "allowed_token_ids": [5, 7]})").params.allowed_token_ids,
            (std::vector<int32_t>{5, 7}));

  // What the fields do not take is a 400 naming them.
  const std::vector<std::pair<std::string, std::string>> refused = {
      {R"("truncate_prompt_tokens": 0)", "truncate_prompt_tokens"},
      {R"("truncate_prompt_tokens": -2)", "truncate_prompt_tokens"},
      {R"("truncate_prompt_tokens": "10")", "truncate_prompt_tokens"},
      {R"("truncate_prompt_tokens": 65)", "truncate_prompt_tokens"},  // above max_model_len
      {R"("add_special_tokens": 1)", "add_special_tokens"},
      {R"("include_stop_str_in_output": "yes")", "include_stop_str_in_output"},
      {R"("add_generation_prompt": "no")", "add_generation_prompt"},
      {R"("chat_template_kwargs": ["enable_thinking"])", "chat_template_kwargs"},
      {R"("chat_template_kwargs": {"messages": []})", "chat_template_kwargs"},
      {R"("allowed_token_ids": [])", "allowed_token_ids"},
      {R"("allowed_token_ids": [100])", "allowed_token_ids"},  // kLimits' vocabulary is 100
      {R"("allowed_token_ids": [-1])", "allowed_token_ids"},
      {R"("allowed_token_ids": 5)", "allowed_token_ids"},
  };
  for (const auto& [fields, param] : refused) {
    const std::string body = R"({"messages": [{"role": "user", "content": "x"}], )" + fields + "}";
    const ApiError e = error_of([&] { chat(body); });
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, param) << body;
  }
}

// best_of (completions): candidates per prompt, at least n; the n best by cumulative logprob.
TEST(OpenAiProtocol, BestOf) {
  EXPECT_EQ(completion(R"({"prompt": "x"})").candidates(), 1);
  const ApiRequest r = completion(R"({"prompt": "x", "best_of": 3, "n": 2})");
  EXPECT_EQ(r.best_of, 3);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(r.candidates(), 3);
  EXPECT_EQ(completion(R"({"prompt": "x", "best_of": 2, "n": 2, "stream": true})").candidates(), 2);
  for (const char* body :
       {R"({"prompt": "x", "best_of": 1, "n": 2})", R"({"prompt": "x", "best_of": 0})",
        R"({"prompt": "x", "best_of": 17})", R"({"prompt": "x", "best_of": 2, "stream": true})",
        R"({"prompt": "x", "best_of": "2"})"}) {
    const ApiError e = error_of([&] { completion(body); });
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.param, "best_of") << body;
  }

  // Two prompts of three candidates; cumulative logprobs -3, -1, -2 and -5, -5, -4.
  auto candidate = [](const std::string& text, std::vector<float> logprobs) {
    ChoiceOutput c;
    c.text = text;
    for (const float lp : logprobs) c.logprobs.push_back({1, lp, {}});
    return c;
  };
  const std::vector<ChoiceOutput> all = {
      candidate("a0", {-1, -2}), candidate("a1", {-0.5f, -0.5f}), candidate("a2", {-2}),
      candidate("b0", {-5}),     candidate("b1", {-2.5f, -2.5f}), candidate("b2", {-4})};
  auto texts = [](const std::vector<ChoiceOutput>& v) {
    std::vector<std::string> t;
    for (const ChoiceOutput& c : v) t.push_back(c.text);
    return t;
  };
  EXPECT_EQ(texts(best_choices(all, 3, 1)), (std::vector<std::string>{"a1", "b2"}));
  // Best first; b0 and b1 tie at -5 and the earlier comes first.
  EXPECT_EQ(texts(best_choices(all, 3, 3)),
            (std::vector<std::string>{"a1", "a2", "a0", "b2", "b0", "b1"}));
}

TEST(OpenAiProtocol, InvalidTokenizeAndDetokenize) {
  const Tokenizer& tok = ascii_tokenizer();
  auto tokenize = [&](const std::string& body, const Tokenizer* t = nullptr) {
    return error_of([&] { tokenize_response(json::parse(body), kLimits, t, nullptr); });
  };
  auto detokenize = [&](const std::string& body, const Tokenizer* t = nullptr) {
    return error_of([&] { detokenize_response(json::parse(body), kLimits, t); });
  };
  struct Case {
    ApiError error;
    int status;
    const char* param;
  };
  const Case cases[] = {
      {tokenize("{}", &tok), 400, "prompt"},
      {tokenize(R"({"prompt": 5})", &tok), 400, "prompt"},
      {tokenize(R"({"prompt": ["a"]})", &tok), 400, "prompt"},
      {tokenize(R"({"prompt": "a", "temperature": 1})", &tok), 400, "temperature"},
      {tokenize(R"({"prompt": "a", "return_token_strs": "yes"})", &tok), 400, "return_token_strs"},
      {tokenize(R"({"prompt": "a", "model": "other"})", &tok), 404, "model"},
      {tokenize(R"({"prompt": "a"})"), 400, "prompt"},  // no tokenizer
      {tokenize(R"({"messages": [{"role": "user", "content": "a"}]})", &tok), 400, "messages"},
      {tokenize(R"({"messages": "a"})", &tok), 400, "messages"},
      {tokenize("[1, 2]", &tok), 400, ""},
      {detokenize(R"({"tokens": [1, 100]})", &tok), 400, "tokens"},
      {detokenize(R"({"tokens": [-1]})", &tok), 400, "tokens"},
      {detokenize(R"({"tokens": "hi"})", &tok), 400, "tokens"},
      {detokenize(R"({"tokens": [1.5]})", &tok), 400, "tokens"},
      {detokenize(R"({})", &tok), 400, "tokens"},
      {detokenize(R"({"tokens": [1], "prompt": "x"})", &tok), 400, "prompt"},
      {detokenize(R"({"tokens": [1]})"), 400, "tokens"},  // no tokenizer
  };
  for (size_t i = 0; i < std::size(cases); ++i) {
    EXPECT_EQ(cases[i].error.status, cases[i].status) << i << ": " << cases[i].error.message;
    EXPECT_EQ(cases[i].error.param, cases[i].param) << i << ": " << cases[i].error.message;
  }
  // An id of the model's vocabulary that the tokenizer has no token for is text of nothing (as
  // Hugging Face decodes it), not an error.
  EXPECT_EQ(detokenize_response(json::parse(R"({"tokens": [97]})"), kLimits, &tok)["prompt"], "");
}

TEST(OpenAiProtocol, PromptLogprobsAndPromptOnlyFields) {
  ApiRequest r = completion(R"({"prompt": "x", "prompt_logprobs": 3})");
  EXPECT_EQ(r.prompt_logprobs, 3);
  EXPECT_EQ(engine_prompt_logprobs(r), 3);
  r = completion(R"({"prompt": "x", "echo": true, "logprobs": 2, "max_tokens": 0})");
  EXPECT_TRUE(r.prompt_only);
  EXPECT_EQ(r.params.max_tokens, 1);
  EXPECT_EQ(engine_prompt_logprobs(r), 2);
  r = completion(R"({"prompt": "x", "echo": true, "logprobs": 2, "prompt_logprobs": 5})");
  EXPECT_EQ(engine_prompt_logprobs(r), 5);
  EXPECT_EQ(engine_prompt_logprobs(completion(R"({"prompt": "x", "logprobs": 2})")), -1);
  r = chat(R"({"messages": [{"role": "user", "content": "x"}], "prompt_logprobs": 0})");
  EXPECT_EQ(r.prompt_logprobs, 0);
  // Streamed completions carry them in their first chunk.
  r = completion(R"({"prompt": "x", "stream": true, "prompt_logprobs": 1})");
  EXPECT_EQ(r.prompt_logprobs, 1);
  EXPECT_TRUE(r.stream);
  struct Bad {
    const char* body;
    bool is_chat;
    const char* param;
  };
  for (const Bad& b : std::initializer_list<Bad>{
           {R"({"prompt": "x", "max_tokens": 0})", false, "max_tokens"},
           {R"({"prompt": "x", "prompt_logprobs": -1})", false, "prompt_logprobs"},
           {R"({"prompt": "x", "prompt_logprobs": "3"})", false, "prompt_logprobs"},
           {R"({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0})", true,
            "max_tokens"},
           {R"({"messages": [{"role": "user", "content": "x"}], "stream": true,
                "prompt_logprobs": 1})",
            true, "prompt_logprobs"},
       }) {
    const ApiError e =
        b.is_chat ? error_of([&] { chat(b.body); }) : error_of([&] { completion(b.body); });
    EXPECT_EQ(e.status, 400) << b.body;
    EXPECT_EQ(e.param, b.param) << b.body << ": " << e.message;
  }
}

TEST(OpenAiProtocol, EchoedPromptLogprobsAndVllmPromptLogprobs) {
  ApiRequest r =
      completion(R"({"prompt": [1, 2, 3], "logprobs": 1, "echo": true, "prompt_logprobs": 1})");
  RequestOutput o = output({4}, "d", true, FinishReason::kLength);
  o.prompt_logprobs = {{2, -0.25f, 2, {{9, -0.125f}}}, {3, -0.75f, 1, {{3, -0.75f}}}};
  std::vector<ChoiceOutput> choices(1);
  choices[0].append(o);
  const ResponseHeader h{"cmpl-1", 123, "tiny"};
  const json j =
      completion_response(h, r, choices, {"P"}, {3}, token_text_for(nullptr), {{1, 2, 3}});
  const json& lp = j["choices"][0]["logprobs"];
  EXPECT_EQ(lp["tokens"], json::array({"token_id:1", "token_id:2", "token_id:3", "token_id:4"}));
  EXPECT_EQ(dump_json(lp["token_logprobs"]), "[null,-0.25,-0.75,-0.5]");
  EXPECT_TRUE(lp["top_logprobs"][0].is_null());
  EXPECT_EQ(lp["top_logprobs"][1]["token_id:9"], -0.125);
  // The output's offsets go on after the prompt tokens' texts (vLLM's), rising throughout.
  EXPECT_EQ(lp["text_offset"], json::array({0, 10, 20, 30}));
  EXPECT_EQ(lp["top_logprobs"][2]["token_id:3"], -0.75);  // the prompt's own token
  EXPECT_EQ(dump_json(j["choices"][0]["prompt_logprobs"]),
            R"([null,{"2":{"logprob":-0.25,"rank":2,"decoded_token":"token_id:2"},)"
            R"("9":{"logprob":-0.125,"rank":1,"decoded_token":"token_id:9"}},)"
            R"({"3":{"logprob":-0.75,"rank":1,"decoded_token":"token_id:3"}}])");
  // Chat: beside the choices.
  ApiRequest c = chat(R"({"messages": [{"role": "user", "content": "x"}], "prompt_logprobs": 0})");
  const json cj = chat_response(h, c, choices, {3}, token_text_for(nullptr));
  EXPECT_EQ(cj["prompt_logprobs"].size(), 3u);
  EXPECT_FALSE(cj["choices"][0].contains("prompt_logprobs"));
}

TEST(OpenAiProtocol, StreamedPromptLogprobsInTheFirstCompletionChunk) {
  const ResponseHeader h{"cmpl-2", 123, "tiny"};
  const std::vector<PromptLogprob> rows = {{2, -0.25f, 2, {{9, -0.125f}}},
                                           {3, -0.75f, 1, {{3, -0.75f}}}};
  const TokenText text = token_text_for(nullptr);
  // Echo with logprobs and prompt_logprobs: the prompt, its logprobs and vLLM's rows at once.
  ApiRequest r = completion(
      R"({"prompt": [1, 2, 3], "logprobs": 1, "echo": true, "prompt_logprobs": 1, "stream": true})");
  EXPECT_TRUE(completion_stream_waits_for_prompt(r));
  json j = completion_prompt_chunk(h, r, 1, "P", {1, 2, 3}, rows, text);
  EXPECT_EQ(j["object"], "text_completion");
  const json& c = j["choices"][0];
  EXPECT_EQ(c["index"], 1);
  EXPECT_EQ(c["text"], "P");
  EXPECT_TRUE(c["finish_reason"].is_null());
  EXPECT_EQ(c["logprobs"]["tokens"], json::array({"token_id:1", "token_id:2", "token_id:3"}));
  EXPECT_EQ(dump_json(c["logprobs"]["token_logprobs"]), "[null,-0.25,-0.75]");
  EXPECT_EQ(c["logprobs"]["text_offset"], json::array({0, 10, 20}));
  EXPECT_EQ(dump_json(c["prompt_logprobs"]),
            R"([null,{"2":{"logprob":-0.25,"rank":2,"decoded_token":"token_id:2"},)"
            R"("9":{"logprob":-0.125,"rank":1,"decoded_token":"token_id:9"}},)"
            R"({"3":{"logprob":-0.75,"rank":1,"decoded_token":"token_id:3"}}])");
  // prompt_logprobs alone: no echoed text, no logprobs of the prompt in "logprobs".
  r = completion(R"({"prompt": [1, 2, 3], "prompt_logprobs": 0, "stream": true})");
  EXPECT_TRUE(completion_stream_waits_for_prompt(r));
  j = completion_prompt_chunk(h, r, 0, "", {}, rows, text);
  EXPECT_EQ(j["choices"][0]["text"], "");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["choices"][0]["prompt_logprobs"].size(), 3u);
  // Echo with logprobs alone: no prompt_logprobs field.
  r = completion(R"({"prompt": [1, 2, 3], "logprobs": 0, "echo": true, "stream": true})");
  EXPECT_TRUE(completion_stream_waits_for_prompt(r));
  j = completion_prompt_chunk(h, r, 0, "P", {1, 2, 3}, rows, text);
  EXPECT_FALSE(j["choices"][0].contains("prompt_logprobs"));
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"].size(), 3u);
  // Echo without logprobs is written at once; chats never wait.
  EXPECT_FALSE(completion_stream_waits_for_prompt(
      completion(R"({"prompt": "x", "echo": true, "stream": true})")));
  EXPECT_FALSE(completion_stream_waits_for_prompt(
      chat(R"({"messages": [{"role": "user", "content": "x"}], "prompt_logprobs": 0})")));
}

}  // namespace
}  // namespace l2kv::server
