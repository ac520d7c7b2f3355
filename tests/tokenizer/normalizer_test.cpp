// tokenizer.json normalizers: Llama 2's Prepend + Replace (a space to U+2581, three bytes for
// one) run on texts of spaces; a chain of growing Replace steps is refused before it allocates
// past Normalizer::kMaxGrowth times the input.
#include "l2kv/tokenizer/normalizer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

const std::string kLowLine = "\xe2\x96\x81";  // U+2581, SentencePiece's space

nlohmann::json replace(const std::string& from, const std::string& to) {
  return {{"type", "Replace"}, {"pattern", {{"String", from}}}, {"content", to}};
}

TEST(Normalizer, LlamaTwoSpacesGrowThreefold) {
  const auto llama2 = make_normalizer(
      {{"type", "Sequence"},
       {"normalizers", {{{"type", "Prepend"}, {"prepend", kLowLine}}, replace(" ", kLowLine)}}});
  EXPECT_EQ(llama2->normalize(" a b"), kLowLine + kLowLine + "a" + kLowLine + "b");
  EXPECT_EQ(llama2->normalize(""), "");
  const std::string spaces(100000, ' ');
  std::string expected;
  for (int i = 0; i <= 100000; ++i) expected += kLowLine;
  EXPECT_EQ(llama2->normalize(spaces), expected);  // 3x the input, inside the bound
}

TEST(Normalizer, GrowingReplaceChainsAreRefused) {
  nlohmann::json chain = nlohmann::json::array();
  for (int i = 0; i < 4; ++i) chain.push_back(replace("a", "aaaa"));  // 256x; bounded at 8x
  const auto normalizer = make_normalizer({{"type", "Sequence"}, {"normalizers", chain}});
  const std::string text(10000, 'a');
  try {
    normalizer->normalize(text);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_NE(
        message.find(
            "Replace normalizer would grow a text of 40000 bytes (10000 before normalization) to "
            "160000 bytes; at most 84096"),
        std::string::npos)
        << message;
  }
  // One step of 4x stays inside the bound (8x + 4 KB).
  const auto once = make_normalizer(replace("a", "aaaa"));
  EXPECT_EQ(once->normalize(text).size(), 40000u);
  // A short text gets the slack: 1,000 x "a" -> 4,000 -> 16,000 would not fit 8 x 1,000 + 4,096.
  const auto twice = make_normalizer(
      {{"type", "Sequence"}, {"normalizers", {replace("a", "aaaa"), replace("a", "aaaa")}}});
  EXPECT_THROW(twice->normalize(std::string(1000, 'a')), Error);
  EXPECT_EQ(twice->normalize(std::string(200, 'a')).size(), 3200u);
}

}  // namespace
}  // namespace l2kv
