// Split pre-tokenizers against Hugging Face's documented SplitDelimiterBehavior example
// ("the-final--countdown" split on "-"), with the pattern given as a String (escaped into a
// literal regex) and as a Regex; Gemma 3's tokenizer.json splits on a String with
// MergedWithPrevious. Unsupported forms are refused by name.
#include "l2kv/tokenizer/pre_tokenizer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

using Pieces = std::vector<std::string>;

Pieces split(const nlohmann::json& pattern, const std::string& behavior, const std::string& text) {
  const auto pre = make_pre_tokenizer(
      {{"type", "Split"}, {"pattern", pattern}, {"behavior", behavior}, {"invert", false}});
  return pre->split({text});
}

TEST(SplitPreTokenizer, BehavesAsHuggingFaceDocuments) {
  for (const nlohmann::json& dash : {nlohmann::json{{"String", "-"}}, {{"Regex", "-"}}}) {
    SCOPED_TRACE(dash.dump());
    const std::string text = "the-final--countdown";
    EXPECT_EQ(split(dash, "Removed", text), (Pieces{"the", "final", "countdown"}));
    EXPECT_EQ(split(dash, "Isolated", text), (Pieces{"the", "-", "final", "-", "-", "countdown"}));
    EXPECT_EQ(split(dash, "MergedWithPrevious", text),
              (Pieces{"the-", "final-", "-", "countdown"}));
    EXPECT_EQ(split(dash, "MergedWithNext", text), (Pieces{"the", "-final", "-", "-countdown"}));
    EXPECT_EQ(split(dash, "Contiguous", text), (Pieces{"the", "-", "final", "--", "countdown"}));
  }
}

TEST(SplitPreTokenizer, MatchesAtTheEdges) {
  const nlohmann::json dash{{"String", "-"}};
  EXPECT_EQ(split(dash, "MergedWithPrevious", "-a-"), (Pieces{"-", "a-"}));
  EXPECT_EQ(split(dash, "MergedWithNext", "-a-"), (Pieces{"-a", "-"}));
  EXPECT_EQ(split(dash, "Contiguous", "--a"), (Pieces{"--", "a"}));
  EXPECT_EQ(split(dash, "Removed", "---"), (Pieces{}));
}

TEST(SplitPreTokenizer, StringPatternsAreLiteral) {
  // Regex metacharacters and multi-byte text in a String pattern match themselves only.
  EXPECT_EQ(split({{"String", "."}}, "Isolated", "a.b"), (Pieces{"a", ".", "b"}));
  EXPECT_EQ(split({{"String", "a+"}}, "Removed", "aaa+b"), (Pieces{"aa", "b"}));
  EXPECT_EQ(split({{"String", "\u2581"}}, "MergedWithPrevious", "x\u2581y"),
            (Pieces{"x\u2581", "y"}));
  EXPECT_EQ(split({{"String", ""}}, "Isolated", "abc"), (Pieces{"abc"}));
}

TEST(SplitPreTokenizer, UnsupportedFormsAreNamed) {
  EXPECT_THROW(split({{"String", "-"}}, "Sideways", "a-b"), Error);
  EXPECT_THROW(split({{"Glob", "-"}}, "Isolated", "a-b"), Error);
  EXPECT_THROW(make_pre_tokenizer({{"type", "Split"},
                                   {"pattern", {{"String", "-"}}},
                                   {"behavior", "Isolated"},
                                   {"invert", true}}),
               Error);
}

// A regex that backtracks without end on a text stops at PCRE2's limits with an error naming
// the pattern and the reason (it said only "PCRE2 error -47").
TEST(SplitPreTokenizer, ARunawayRegexIsANamedError) {
  try {
    split({{"Regex", "(a+)+$"}}, "Isolated", std::string(64, 'a') + "b");
    FAIL() << "the match did not stop";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("/(a+)+$/"), std::string::npos) << what;
    EXPECT_NE(what.find("PCRE2 error"), std::string::npos) << what;
    EXPECT_NE(what.find("limit"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace l2kv
