// The engine's output side on its own: per-request text from token ids, stop strings across
// tokens, text held back and flushed, requests kept apart, and no text without a tokenizer.
#include "l2kv/engine/output_processor.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

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
