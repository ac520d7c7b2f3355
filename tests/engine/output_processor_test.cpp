// The output side on its own (what the front ends run on the engine's token ids): per-request
// text, stop strings across tokens and inside one output, what the engine produced after a stop
// dropped, text held back and flushed, stop tokens' text left out, requests kept apart, and no
// text (and no stop strings) without a tokenizer.
#include "l2kv/engine/output_processor.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv {
namespace {

// Ids 0..25 are the letters a..z (a byte-free BPE vocabulary: decoding is concatenation).
const Tokenizer& letters() {
  static const Tokenizer tokenizer = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (int32_t id = 0; id < 26; ++id) vocab[std::string(1, static_cast<char>('a' + id))] = id;
    const nlohmann::json spec = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
    return Tokenizer::from_json(spec.dump());
  }();
  return tokenizer;
}

int32_t id(char c) {
  return c - 'a';
}

// The letters, then a special "<s>" (26) and the three bytes of the euro sign as byte-fallback
// tokens (27-29, E2 82 AC), decoded as Llama 2's tokenizer does.
const Tokenizer& letters_with_special_and_bytes() {
  static const Tokenizer tokenizer = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (int32_t i = 0; i < 26; ++i) vocab[std::string(1, static_cast<char>('a' + i))] = i;
    vocab["<s>"] = 26;
    vocab["<0xE2>"] = 27;
    vocab["<0x82>"] = 28;
    vocab["<0xAC>"] = 29;
    const nlohmann::json spec = {
        {"added_tokens", {{{"id", 26}, {"content", "<s>"}, {"special", true}}}},
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
        {"decoder",
         {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}}}};
    return Tokenizer::from_json(spec.dump());
  }();
  return tokenizer;
}

// A request's outputs as the engine streams them: `tokens` since the last one, completion_tokens
// counted, logprobs one per token (their `token` field equal to the token).
struct EngineStream {
  int64_t request_id = 0;
  int32_t produced = 0;
  RequestOutput next(std::vector<int32_t> tokens, FinishReason reason = FinishReason::kNone) {
    RequestOutput out;
    out.request_id = request_id;
    for (int32_t t : tokens) {
      SampledToken s;
      s.token = t;
      out.new_logprobs.push_back(s);
    }
    out.new_tokens = std::move(tokens);
    produced += static_cast<int32_t>(out.new_tokens.size());
    out.completion_tokens = produced;
    out.finished = reason != FinishReason::kNone;
    out.finish_reason = reason;
    return out;
  }
};

using Verdict = OutputProcessor::Verdict;

TEST(OutputProcessor, StopStringAcrossTokensEndsTheOutputAndLaterOutputsAreDropped) {
  OutputProcessor text(&letters());
  SamplingParams p;
  p.stop = {"cde"};
  text.add(7, p);
  EngineStream engine{42};
  std::string got;
  for (char c : std::string("abcd")) {
    RequestOutput out = engine.next({id(c)});
    EXPECT_EQ(text.process(7, out), Verdict::kDeliver);
    EXPECT_FALSE(out.finished);
    got += out.new_text;
  }
  EXPECT_EQ(got, "ab");  // "cd" may start the stop string: held
  RequestOutput out = engine.next({id('e')});
  EXPECT_EQ(text.process(7, out), Verdict::kEnded);  // the caller aborts request 42
  EXPECT_EQ(out.new_text, "");                       // the stop string is not part of the output
  EXPECT_TRUE(out.finished);
  EXPECT_EQ(out.finish_reason, FinishReason::kStop);
  EXPECT_EQ(out.stop_reason, "cde");
  EXPECT_EQ(out.completion_tokens, 5);
  EXPECT_EQ(out.new_tokens, std::vector<int32_t>{id('e')});
  // The engine ran a step on before the abort reached it, then ended the request.
  RequestOutput late = engine.next({id('f')});
  EXPECT_EQ(text.process(7, late), Verdict::kDrop);
  RequestOutput aborted = engine.next({}, FinishReason::kAbort);
  EXPECT_EQ(text.process(7, aborted), Verdict::kDrop);
  EXPECT_EQ(text.size(), 0u);
}

TEST(OutputProcessor, AStopInsideOneOutputCutsItsTokensAndLogprobs) {
  OutputProcessor text(&letters());
  SamplingParams p;
  p.stop = {"bc"};
  text.add(1, p);
  EngineStream engine{3};
  RequestOutput out = engine.next({id('a'), id('b'), id('c'), id('d')});
  EXPECT_EQ(text.process(1, out), Verdict::kEnded);
  EXPECT_EQ(out.new_text, "a");
  EXPECT_EQ(out.new_tokens, (std::vector<int32_t>{id('a'), id('b'), id('c')}));
  ASSERT_EQ(out.new_logprobs.size(), 3u);
  EXPECT_EQ(out.new_logprobs.back().token, id('c'));
  EXPECT_EQ(out.completion_tokens, 3);
  EXPECT_EQ(out.stop_reason, "bc");
}

TEST(OutputProcessor, AStopOnTheEnginesLastTokenNeedsNoAbort) {
  OutputProcessor text(&letters());
  SamplingParams p;
  p.stop = {"ab"};
  text.add(1, p);
  EngineStream engine{5};
  RequestOutput out = engine.next({id('a')});
  text.process(1, out);
  out = engine.next({id('b')}, FinishReason::kLength);  // max_tokens on the same token
  EXPECT_EQ(text.process(1, out), Verdict::kDeliver);   // the engine has ended it already
  EXPECT_EQ(out.finish_reason, FinishReason::kStop);
  EXPECT_EQ(out.stop_reason, "ab");
  EXPECT_EQ(text.size(), 0u);
  // The engine ended it on a stop token id after the text met a stop string: the string is the
  // reason, and no longer a token id.
  text.add(2, p);
  EngineStream other{6};
  out = other.next({id('a'), id('b'), id('c')}, FinishReason::kStop);
  out.stop_reason = std::to_string(id('c'));
  out.stop_token_id = id('c');
  EXPECT_EQ(text.process(2, out), Verdict::kDeliver);
  EXPECT_EQ(out.stop_reason, "ab");
  EXPECT_EQ(out.stop_token_id, -1);
  EXPECT_EQ(out.new_tokens.size(), 2u);
}

TEST(OutputProcessor, AStopTokensTextIsNotPartOfTheOutput) {
  OutputProcessor text(&letters());
  text.add(1, SamplingParams{});
  EngineStream engine{5};
  RequestOutput out = engine.next({id('a'), id('z')}, FinishReason::kStop);  // z: an EOS id
  out.stop_reason = "";
  EXPECT_EQ(text.process(1, out), Verdict::kDeliver);
  EXPECT_EQ(out.new_text, "a");
  EXPECT_EQ(out.new_tokens.size(), 2u);  // the token itself stays in the ids
  EXPECT_EQ(out.completion_tokens, 2);
  // A stop_token_ids token the same way (its id is the stop_reason), also alone in an output.
  text.add(2, SamplingParams{});
  EngineStream other{6};
  out = other.next({id('b')});
  text.process(2, out);
  EXPECT_EQ(out.new_text, "b");
  out = other.next({id('y')}, FinishReason::kStop);
  out.stop_reason = std::to_string(id('y'));
  EXPECT_EQ(text.process(2, out), Verdict::kDeliver);
  EXPECT_EQ(out.new_text, "");
  EXPECT_EQ(out.stop_reason, std::to_string(id('y')));
}

// vLLM's include_stop_str_in_output keeps a stop token's text too; a special stop token's text
// still follows skip_special_tokens.
TEST(OutputProcessor, IncludeStopStrKeepsAStopTokensText) {
  OutputProcessor text(&letters_with_special_and_bytes());
  SamplingParams included;
  included.include_stop_str_in_output = true;
  text.add(1, included);
  EngineStream engine{5};
  RequestOutput out = engine.next({id('a'), id('y')}, FinishReason::kStop);  // y: a stop id
  out.stop_reason = std::to_string(id('y'));
  EXPECT_EQ(text.process(1, out), Verdict::kDeliver);
  EXPECT_EQ(out.new_text, "ay");
  EXPECT_EQ(out.new_tokens.size(), 2u);
  EXPECT_EQ(out.stop_reason, std::to_string(id('y')));
  // "<s>" (26) as the stop token: skipped by default, kept with skip_special_tokens false.
  for (const bool skip : {true, false}) {
    SamplingParams p = included;
    p.skip_special_tokens = skip;
    text.add(2, p);
    EngineStream other{6};
    out = other.next({id('b'), 26}, FinishReason::kStop);
    text.process(2, out);
    EXPECT_EQ(out.new_text, skip ? "b" : "b<s>") << "skip_special_tokens " << skip;
  }
}

TEST(OutputProcessor, HeldTextIsFlushedWhenTheOutputEndsOtherwise) {
  OutputProcessor text(&letters());
  SamplingParams p;
  p.stop = {"xyz"};
  text.add(1, p);
  text.add(2, p);
  EngineStream one{1}, two{2};
  std::string got;
  for (char c : std::string("qxy")) {
    RequestOutput out = one.next({id(c)});
    text.process(1, out);
    got += out.new_text;
  }
  EXPECT_EQ(got, "q");
  RequestOutput out = one.next({id('w')}, FinishReason::kLength);
  EXPECT_EQ(text.process(1, out), Verdict::kDeliver);
  EXPECT_EQ(out.new_text, "xyw");
  // An abort (no tokens) flushes what was held too.
  out = two.next({id('x')});
  text.process(2, out);
  EXPECT_EQ(out.new_text, "");
  out = two.next({}, FinishReason::kAbort);
  text.process(2, out);
  EXPECT_EQ(out.new_text, "x");
  EXPECT_EQ(text.size(), 0u);
}

TEST(OutputProcessor, BeforeMinTokensNoStopIsLookedForAndRequestsStayApart) {
  OutputProcessor text(&letters());
  SamplingParams waits;
  waits.stop = {"ab"};
  waits.min_tokens = 2;
  SamplingParams included;
  included.stop = {"ab"};
  included.include_stop_str_in_output = true;
  text.add(1, waits);
  text.add(2, included);
  EngineStream one{10}, two{20};
  std::string got;
  for (char c : std::string("abc")) {
    RequestOutput out = one.next({id(c)});
    EXPECT_EQ(text.process(1, out), Verdict::kDeliver);
    got += out.new_text;
  }
  EXPECT_EQ(got, "abc");  // "ab" ended within the first min_tokens tokens: it streams
  RequestOutput out = two.next({id('a')});
  text.process(2, out);
  out = two.next({id('b')});
  EXPECT_EQ(text.process(2, out), Verdict::kEnded);
  EXPECT_EQ(out.new_text, "ab");  // included in the output
}

TEST(OutputProcessor, SkipSpecialTokensIsPerRequest) {
  OutputProcessor text(&letters_with_special_and_bytes());
  SamplingParams skip, keep;
  skip.skip_special_tokens = true;
  keep.skip_special_tokens = false;
  text.add(1, skip);
  text.add(2, keep);
  for (const int64_t r : {1, 2}) {
    EngineStream engine{r};
    RequestOutput out = engine.next({id('a'), 26, id('b')}, FinishReason::kLength);
    text.process(r, out);
    EXPECT_EQ(out.new_text, r == 1 ? "ab" : "a<s>b");
  }
}

TEST(OutputProcessor, AnIncompleteCharacterWaitsAndEndsAsAReplacement) {
  OutputProcessor text(&letters_with_special_and_bytes());
  text.add(1, SamplingParams{});
  EngineStream engine{1};
  RequestOutput out = engine.next({id('a'), 27, 28});  // E2 82: two of three bytes
  text.process(1, out);
  EXPECT_EQ(out.new_text, "a");
  out = engine.next({29});  // AC completes the euro sign
  text.process(1, out);
  EXPECT_EQ(out.new_text, "\xE2\x82\xAC");
  text.add(2, SamplingParams{});
  EngineStream other{2};
  out = other.next({27}, FinishReason::kLength);  // the output ends inside a character
  text.process(2, out);
  EXPECT_EQ(out.new_text, "\xEF\xBF\xBD");
}

// An id the tokenizer has no token for (a model's embedding rows past its vocabulary) adds no
// text and the output goes on, as in vLLM; the text held for a stop string stays held.
TEST(OutputProcessor, AnIdWithoutATokenAddsNoTextAndTheOutputGoesOn) {
  OutputProcessor text(&letters());
  SamplingParams p;
  p.stop = {"xyz"};
  text.add(1, p);
  EngineStream engine{1};
  RequestOutput out = engine.next({id('x'), id('y')});
  text.process(1, out);
  EXPECT_EQ(out.new_text, "");
  out = engine.next({999, id('a')});  // 999: outside the vocabulary
  EXPECT_EQ(text.process(1, out), Verdict::kDeliver);
  EXPECT_EQ(out.finish_reason, FinishReason::kNone);
  EXPECT_EQ(out.new_tokens, (std::vector<int32_t>{999, id('a')}));
  EXPECT_EQ(out.new_text, "xya");
}

TEST(OutputProcessor, NoTokenizerNoTextAndNoStopStrings) {
  OutputProcessor text(nullptr);
  text.add(3, SamplingParams{});
  EngineStream engine{3};
  RequestOutput out = engine.next({0, 1}, FinishReason::kLength);
  EXPECT_EQ(text.process(3, out), Verdict::kDeliver);
  EXPECT_EQ(out.new_text, "");
  EXPECT_EQ(out.new_tokens.size(), 2u);
  SamplingParams stops;
  stops.stop = {"x"};
  try {
    text.add(4, stops);
    FAIL() << "stop strings without a tokenizer were taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer"), std::string::npos) << e.what();
  }
  OutputProcessor with_tokenizer(&letters());
  stops.stop = {"a", ""};
  EXPECT_THROW(with_tokenizer.add(1, stops), Error);
  EXPECT_EQ(with_tokenizer.size(), 0u);
  // Keys never added pass through as they are.
  RequestOutput unknown = engine.next({id('a')});
  EXPECT_EQ(with_tokenizer.process(99, unknown), Verdict::kDeliver);
  EXPECT_EQ(unknown.new_text, "");
}

}  // namespace
}  // namespace l2kv
