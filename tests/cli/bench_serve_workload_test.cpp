// The requests of `l2kv bench-serve`: seeded prompts, shared prefixes and multi-turn
// conversations whose turn k carries turns 1..k-1 and their answers in order.
#include "l2kv/cli/bench_serve_workload.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "l2kv/cli/latency_stats.h"
#include "l2kv/core/error.h"

namespace l2kv::cli {
namespace {

using nlohmann::json;

size_t words_in(const std::string& text) {
  size_t n = text.empty() ? 0 : 1;
  for (char c : text) n += c == ' ';
  return n;
}

TEST(BenchServeWorkload, SingleTurnPromptsAreSeededAndShareTheirPrefix) {
  WorkloadOptions o;
  o.num_prompts = 4;
  o.input_len = 5;
  o.shared_prefix_len = 3;
  o.num_prefixes = 2;
  const auto ids = make_conversations(o, /*chat=*/false);
  ASSERT_EQ(ids.size(), 4u);
  for (const auto& c : ids) {
    ASSERT_EQ(c.size(), 1u);
    EXPECT_EQ(c[0].ids.size(), 8u);
    EXPECT_TRUE(c[0].text.empty());
    for (int32_t id : c[0].ids) EXPECT_TRUE(id >= 100 && id < o.vocab_size) << id;
  }
  // Request i has prefix i % 2: 0 and 2 share theirs, 0 and 1 do not.
  auto head = [&](size_t i) {
    return std::vector<int32_t>(ids[i][0].ids.begin(), ids[i][0].ids.begin() + 3);
  };
  EXPECT_EQ(head(0), head(2));
  EXPECT_EQ(head(1), head(3));
  EXPECT_NE(head(0), head(1));
  EXPECT_EQ(make_conversations(o, false)[3][0].ids, ids[3][0].ids);  // same seed, same prompts
  o.seed = 1;
  EXPECT_NE(make_conversations(o, false)[3][0].ids, ids[3][0].ids);

  const json body = json::parse(request_body(o, "m", false, ids[0], {}));
  EXPECT_EQ(body["model"], "m");
  EXPECT_EQ(body["prompt"].get<std::vector<int32_t>>(), ids[0][0].ids);
  EXPECT_EQ(body["max_tokens"], o.output_len);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["stream_options"]["include_usage"], true);
  EXPECT_EQ(body["ignore_eos"], true);
  EXPECT_FALSE(body.contains("messages"));
}

TEST(BenchServeWorkload, OneTurnIsTheSingleTurnWorkload) {
  // --multi-turn 1 (and 0) draws the same prompts as no --multi-turn, and a multi-turn
  // workload's first turns are those prompts when there is one conversation.
  WorkloadOptions o;
  o.num_prompts = 3;
  o.input_len = 6;
  const auto plain = make_conversations(o, true);
  o.multi_turn = 0;
  EXPECT_EQ(make_conversations(o, true)[2][0].text, plain[2][0].text);
  o.multi_turn = 1;
  EXPECT_EQ(make_conversations(o, true)[2][0].text, plain[2][0].text);
  o.num_prompts = 1;
  o.multi_turn = 4;
  const auto multi = make_conversations(o, true);
  ASSERT_EQ(multi.size(), 1u);
  ASSERT_EQ(multi[0].size(), 4u);
  EXPECT_EQ(multi[0][0].text, plain[0][0].text);
  for (const UserTurn& t : multi[0]) EXPECT_EQ(words_in(t.text), 6u) << t.text;
  EXPECT_NE(multi[0][1].text, multi[0][0].text);
}

TEST(BenchServeWorkload, ChatTurnKCarriesEarlierTurnsAndAnswersInOrder) {
  WorkloadOptions o;
  o.num_prompts = 2;
  o.input_len = 4;
  o.shared_prefix_len = 2;
  o.multi_turn = 3;
  o.output_len = 7;
  const auto conversations = make_conversations(o, /*chat=*/true);
  ASSERT_EQ(conversations.size(), 2u);
  const auto& c = conversations[1];
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(words_in(c[0].text), 6u);  // the shared prefix starts the first message only
  EXPECT_EQ(words_in(c[1].text), 4u);
  EXPECT_EQ(words_in(c[2].text), 4u);
  auto two_words = [](const std::string& text) {
    return text.substr(0, text.find(' ', text.find(' ') + 1));
  };
  EXPECT_EQ(two_words(c[0].text), two_words(conversations[0][0].text));  // one shared prefix
  const std::vector<std::string> answers = {"first answer", "second answer"};
  for (size_t k = 0; k < 3; ++k) {
    const std::vector<std::string> earlier(answers.begin(), answers.begin() + k);
    const json body = json::parse(request_body(o, "m", true, c, earlier));
    const json& messages = body["messages"];
    ASSERT_EQ(messages.size(), 2 * k + 1) << body.dump();
    for (size_t j = 0; j < k; ++j) {
      EXPECT_EQ(messages[2 * j]["role"], "user");
      EXPECT_EQ(messages[2 * j]["content"], c[j].text);
      EXPECT_EQ(messages[2 * j + 1]["role"], "assistant");
      EXPECT_EQ(messages[2 * j + 1]["content"], answers[j]);
    }
    EXPECT_EQ(messages[2 * k]["role"], "user");
    EXPECT_EQ(messages[2 * k]["content"], c[k].text);
    EXPECT_EQ(body["max_completion_tokens"], 7);
    EXPECT_FALSE(body.contains("prompt"));
  }
  EXPECT_THROW(request_body(o, "m", true, c, {"a", "b", "c"}), Error);  // no turn 4
}

TEST(BenchServeWorkload, CompletionTurnKConcatenatesPromptsAndAnswers) {
  WorkloadOptions o;
  o.num_prompts = 1;
  o.input_len = 3;
  o.multi_turn = 3;
  o.random_text = true;
  const auto c = make_conversations(o, /*chat=*/false)[0];
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(json::parse(request_body(o, "m", false, c, {}))["prompt"], c[0].text);
  EXPECT_EQ(json::parse(request_body(o, "m", false, c, {" one"}))["prompt"],
            c[0].text + " one\n" + c[1].text);
  EXPECT_EQ(json::parse(request_body(o, "m", false, c, {" one", " two"}))["prompt"],
            c[0].text + " one\n" + c[1].text + " two\n" + c[2].text);
}

TEST(BenchServeWorkload, ExtraBodyIsMergedLastAndMustBeAnObject) {
  WorkloadOptions o;
  o.num_prompts = 1;
  o.input_len = 2;
  o.extra_body = R"({"response_format": {"type": "json_object"}, "temperature": 0.7})";
  EXPECT_NO_THROW(validate_workload(o, /*chat=*/true));
  const auto c = make_conversations(o, /*chat=*/true)[0];
  const json body = json::parse(request_body(o, "m", true, c, {}));
  EXPECT_EQ(body["response_format"]["type"], "json_object");
  EXPECT_EQ(body["temperature"], 0.7) << "the extra body replaces the workload's fields";
  EXPECT_EQ(body["max_tokens"], o.output_len) << "and keeps the others";
  for (const char* bad : {"[1, 2]", "{\"open\": ", "3"}) {
    o.extra_body = bad;
    try {
      validate_workload(o, true);
      FAIL() << "accepted --extra-body " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--extra-body"), std::string::npos) << e.what();
    }
  }
}

TEST(BenchServeWorkload, MultiTurnCompletionsNeedTextPrompts) {
  WorkloadOptions o;
  o.multi_turn = 2;
  EXPECT_NO_THROW(validate_workload(o, /*chat=*/true));
  try {
    validate_workload(o, /*chat=*/false);
    FAIL() << "token-id prompts cannot carry answers";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--random-text"), std::string::npos) << e.what();
  }
  o.random_text = true;
  EXPECT_NO_THROW(validate_workload(o, false));
  o.random_text = false;
  o.multi_turn = 1;
  EXPECT_NO_THROW(validate_workload(o, false));
  o.multi_turn = 0;
  EXPECT_NO_THROW(validate_workload(o, false));
  EXPECT_EQ(turns_per_conversation(o), 1);
  o.multi_turn = 1 << 16;
  o.num_prompts = 1 << 8;
  EXPECT_NO_THROW(validate_workload(o, true));
  o.num_prompts = (1 << 8) + 1;
  EXPECT_THROW(validate_workload(o, true), Error);  // over 2^24 requests
}

TEST(BenchServeWorkload, TtftByTurnSummarizesEachTurnsSuccesses) {
  auto request = [](int32_t turn, double ttft, bool ok) {
    RequestTiming r;
    r.success = ok;
    r.turn = turn;
    r.send_s = 1.0;
    r.chunk_s = {1.0 + ttft};
    r.end_s = 3.0;
    return r;
  };
  const std::vector<RequestTiming> rs = {request(1, 0.4, true), request(2, 0.1, true),
                                         request(1, 0.6, true), request(2, 0.3, true),
                                         request(3, 9.0, false)};
  const std::vector<Summary> by_turn = ttft_by_turn(rs);
  ASSERT_EQ(by_turn.size(), 3u);
  EXPECT_EQ(by_turn[0].count, 2u);
  EXPECT_NEAR(by_turn[0].mean, 0.5, 1e-12);
  EXPECT_EQ(by_turn[1].count, 2u);
  EXPECT_NEAR(by_turn[1].median, 0.2, 1e-12);
  EXPECT_EQ(by_turn[2].count, 0u);  // its one request failed
  EXPECT_EQ(by_turn[2].mean, 0.0);
  EXPECT_TRUE(ttft_by_turn({}).empty());
}

}  // namespace
}  // namespace l2kv::cli
