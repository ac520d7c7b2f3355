// Added tokens: longest match first, single_word falling back to a shorter token, lstrip and
// rstrip, lookup by id, and many tokens sharing a prefix over a long text of that prefix (the
// trie's walk stops at the longest token, so the text is cut exactly where a scan would).
#include "l2kv/tokenizer/added_vocabulary.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace l2kv {
namespace {

using Pieces = std::vector<std::pair<std::string, int32_t>>;

Pieces split(const AddedVocabulary& vocabulary, const std::string& text) {
  Pieces out;
  for (const auto& segment : vocabulary.split(text)) out.emplace_back(segment.text, segment.id);
  return out;
}

nlohmann::json token(const std::string& content, int32_t id) {
  return {{"content", content}, {"id", id}};
}

TEST(AddedVocabulary, TakesTheLongestTokenAtEachPosition) {
  const AddedVocabulary v(
      nlohmann::json::array({token("<a", 1), token("<abc", 2), token("<ab", 3)}));
  EXPECT_EQ(split(v, "x<abcd<ab<a<"),
            (Pieces{{"x", -1}, {"<abc", 2}, {"d", -1}, {"<ab", 3}, {"<a", 1}, {"<", -1}}));
  EXPECT_EQ(split(v, "plain text"), (Pieces{{"plain text", -1}}));
  EXPECT_EQ(split(v, ""), Pieces{});
}

TEST(AddedVocabulary, SingleWordFallsBackToAShorterToken) {
  auto words = nlohmann::json::array({token("ab", 1), token("abc", 2)});
  words[1]["single_word"] = true;
  const AddedVocabulary v(words);
  EXPECT_EQ(split(v, "abc d"), (Pieces{{"abc", 2}, {" d", -1}}));
  // "abcd": "abc" is inside a word, so the shorter "ab" is taken.
  EXPECT_EQ(split(v, "abcd"), (Pieces{{"ab", 1}, {"cd", -1}}));
  EXPECT_EQ(split(v, "xabc"), (Pieces{{"x", -1}, {"ab", 1}, {"c", -1}}));
}

TEST(AddedVocabulary, StripsWhitespaceWhereAsked) {
  auto tokens = nlohmann::json::array({token("<s>", 5)});
  tokens[0]["lstrip"] = true;
  tokens[0]["rstrip"] = true;
  const AddedVocabulary v(tokens);
  EXPECT_EQ(split(v, "a  <s> \tb"), (Pieces{{"a", -1}, {"<s>", 5}, {"b", -1}}));
  EXPECT_EQ(split(v, "  <s>  "), (Pieces{{"<s>", 5}}));
}

TEST(AddedVocabulary, FindsTokensById) {
  const AddedVocabulary v(
      nlohmann::json::array({token("<x>", 7), token("<y>", 9), token("<x again>", 7)}));
  ASSERT_NE(v.find(9), nullptr);
  EXPECT_EQ(v.find(9)->content, "<y>");
  ASSERT_NE(v.find(7), nullptr);
  EXPECT_EQ(v.find(7)->content, "<x>");  // the first of a repeated id, as before
  EXPECT_EQ(v.find(8), nullptr);
}

TEST(AddedVocabulary, ManyTokensSharingAPrefixOverALongText) {
  // 6,144 tokens "<|reserved_N|>" and a text of 200,000 '<' with a few tokens in it.
  nlohmann::json tokens = nlohmann::json::array();
  for (int i = 0; i < 6144; ++i) {
    std::string content = "<|reserved_";
    content += std::to_string(i);
    content += "|>";
    tokens.push_back(token(content, 1000 + i));
  }
  const AddedVocabulary v(tokens);
  std::string text(100000, '<');
  text += "<|reserved_6143|><|reserved_12|>";
  text += std::string(100000, '<');
  const Pieces pieces = split(v, text);
  ASSERT_EQ(pieces.size(), 4u);
  EXPECT_EQ(pieces[0], (std::pair<std::string, int32_t>{std::string(100000, '<'), -1}));
  EXPECT_EQ(pieces[1], (std::pair<std::string, int32_t>{"<|reserved_6143|>", 7143}));
  EXPECT_EQ(pieces[2], (std::pair<std::string, int32_t>{"<|reserved_12|>", 1012}));
  EXPECT_EQ(pieces[3].second, -1);
  EXPECT_EQ(pieces[3].first.size(), 100000u);
}

}  // namespace
}  // namespace l2kv
