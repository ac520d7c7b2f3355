// The OpenAI protocol layer without sockets: every request field, every invalid case's status,
// type and param, and the response shapes.
#include "l2kv/server/openai_protocol.h"

#include <gtest/gtest.h>

#include <string>

namespace l2kv::server {
namespace {

const ServerLimits kLimits{"tiny", 64, 100};

ApiRequest completion(const std::string& body) {
  return parse_completion_request(json::parse(body), kLimits);
}
ApiRequest chat(const std::string& body) {
  return parse_chat_request(json::parse(body), kLimits);
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
                                  {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "logprobs": true, "top_logprobs": 2})");
  EXPECT_EQ(r.endpoint, Endpoint::kChatCompletions);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[1]["content"], "hi");
  ASSERT_TRUE(r.tools.is_array());
  EXPECT_EQ(r.tools.size(), 1u);
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
  const json text = completion_chunk({"cmpl-3", 1, "tiny"}, 0, "t", FinishReason::kStop, nullptr);
  EXPECT_EQ(text["object"], "text_completion");
  EXPECT_EQ(text["choices"][0]["text"], "t");
  EXPECT_EQ(text["choices"][0]["finish_reason"], "stop");
  const json usage = usage_chunk(h, Endpoint::kChatCompletions, 3, 4);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["total_tokens"], 7);
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(std::string(kSseDone), "data: [DONE]\n\n");
  // A token that ends inside a UTF-8 character still serializes.
  EXPECT_NO_THROW(sse_event(json{{"t", std::string("\xe2\x82")}}));
}

}  // namespace
}  // namespace l2kv::server
