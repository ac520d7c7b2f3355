// The engine's output side on its own: per-request text from token ids, stop strings across
// tokens, text held back and flushed, requests kept apart, and no text without a tokenizer.
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

TEST(OutputProcessor, StopStringAcrossTokensEndsTheTextBeforeIt) {
  OutputProcessor out(&letters());
  SamplingParams p;
  p.stop = {"cde"};
  out.add(7, p);
  EXPECT_EQ(out.push(7, id('a'), true), std::nullopt);
  EXPECT_EQ(out.push(7, id('b'), true), std::nullopt);
  EXPECT_EQ(out.push(7, id('c'), true), std::nullopt);  // "c" may start the stop string: held
  EXPECT_EQ(out.take(7), "ab");
  EXPECT_EQ(out.push(7, id('d'), true), std::nullopt);
  EXPECT_EQ(out.push(7, id('e'), true), std::optional<std::string>("cde"));
  EXPECT_EQ(out.take(7), "");  // the stop string is not part of the output
}

TEST(OutputProcessor, HeldTextIsFlushedWhenTheOutputEndsOtherwise) {
  OutputProcessor out(&letters());
  SamplingParams p;
  p.stop = {"xyz"};
  out.add(1, p);
  out.push(1, id('q'), true);
  out.push(1, id('x'), true);
  out.push(1, id('y'), true);
  EXPECT_EQ(out.take(1), "q");
  out.finish(1);
  EXPECT_EQ(out.take(1), "xy");
  out.remove(1);
  EXPECT_EQ(out.push(1, id('z'), true), std::nullopt);  // forgotten
  EXPECT_EQ(out.take(1), "");
}

TEST(OutputProcessor, BeforeMinTokensNoStopIsLookedForAndRequestsStayApart) {
  OutputProcessor out(&letters());
  SamplingParams stops_ab;
  stops_ab.stop = {"ab"};
  SamplingParams included = stops_ab;
  included.include_stop_str_in_output = true;
  out.add(1, stops_ab);
  out.add(2, included);
  EXPECT_EQ(out.push(1, id('a'), false), std::nullopt);
  EXPECT_EQ(out.push(1, id('b'), false), std::nullopt);  // may not stop yet: "ab" streams
  EXPECT_EQ(out.push(2, id('a'), true), std::nullopt);
  EXPECT_EQ(out.push(2, id('b'), true), std::optional<std::string>("ab"));
  EXPECT_EQ(out.take(1), "ab");
  EXPECT_EQ(out.take(2), "ab");  // included in the output
}

TEST(OutputProcessor, SkipSpecialTokensIsPerRequest) {
  OutputProcessor out(&letters_with_special_and_bytes());
  SamplingParams skip, keep;
  skip.skip_special_tokens = true;
  keep.skip_special_tokens = false;
  out.add(1, skip);
  out.add(2, keep);
  for (const int64_t r : {1, 2}) {
    out.push(r, id('a'), true);
    out.push(r, 26, true);
    out.push(r, id('b'), true);
  }
  EXPECT_EQ(out.take(1), "ab");
  EXPECT_EQ(out.take(2), "a<s>b");
}

TEST(OutputProcessor, AnIncompleteCharacterWaitsAndEndsAsAReplacement) {
  OutputProcessor out(&letters_with_special_and_bytes());
  out.add(1, SamplingParams{});
  out.push(1, id('a'), true);
  out.push(1, 27, true);  // E2: the first of three bytes
  out.push(1, 28, true);  // 82
  EXPECT_EQ(out.take(1), "a");
  out.push(1, 29, true);  // AC completes the euro sign
  EXPECT_EQ(out.take(1), "\xE2\x82\xAC");
  out.add(2, SamplingParams{});
  out.push(2, 27, true);
  out.finish(2);  // the output ends inside a character: U+FFFD
  EXPECT_EQ(out.take(2), "\xEF\xBF\xBD");
}

TEST(OutputProcessor, AnUndecodableTokenThrowsAndTheHeldTextIsStillFlushed) {
  OutputProcessor out(&letters());
  SamplingParams p;
  p.stop = {"xyz"};
  out.add(1, p);
  out.push(1, id('x'), true);
  out.push(1, id('y'), true);
  EXPECT_THROW(out.push(1, 999, true), Error);  // outside the vocabulary
  out.finish(1);  // the detokenizer cannot decode what it holds: the checker's text is kept
  EXPECT_EQ(out.take(1), "xy");
}

TEST(OutputProcessor, NoTokenizerNoText) {
  OutputProcessor out(nullptr);
  SamplingParams p;
  out.add(3, p);
  EXPECT_EQ(out.push(3, 0, true), std::nullopt);
  out.finish(3);
  EXPECT_EQ(out.take(3), "");
  EXPECT_EQ(out.take(99), "");  // unknown ids too
}

}  // namespace
}  // namespace l2kv
