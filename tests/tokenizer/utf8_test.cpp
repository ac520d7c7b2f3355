#include "l2kv/tokenizer/utf8.h"

#include <gtest/gtest.h>

#include "l2kv/tokenizer/byte_level.h"

namespace l2kv {
namespace {

TEST(Utf8, ValidatesAndRepairsLikeWhatwg) {
  EXPECT_TRUE(utf8::is_valid("plain ascii"));
  EXPECT_TRUE(utf8::is_valid("caf\xC3\xA9 \xF0\x9F\x98\x80"));
  EXPECT_FALSE(utf8::is_valid("\xC3"));              // truncated
  EXPECT_FALSE(utf8::is_valid("\xE0\x80\x80"));      // overlong
  EXPECT_FALSE(utf8::is_valid("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(utf8::is_valid("\xF4\x90\x80\x80"));  // above U+10FFFF
  const std::string r = "\xEF\xBF\xBD";
  EXPECT_EQ(utf8::repair("a\xFF"
                         "b"),
            "a" + r + "b");
  EXPECT_EQ(utf8::repair("\xF0\x9F\x98"), r);          // one U+FFFD for a truncated sequence
  EXPECT_EQ(utf8::repair("\xE0\x80\x80"), r + r + r);  // each byte of an overlong form
  EXPECT_EQ(utf8::repair("ok\xC3\xA9"), "ok\xC3\xA9");
}

TEST(ByteLevel, MapsEveryByteToOneCharacterAndBack) {
  for (int b = 0; b < 256; ++b) {
    const std::string chars = byte_level::encode(std::string(1, static_cast<char>(b)));
    size_t i = 0;
    const char32_t cp = utf8::next(chars, i);
    EXPECT_EQ(i, chars.size());
    ASSERT_TRUE(byte_level::byte_of(cp).has_value());
    EXPECT_EQ(*byte_level::byte_of(cp), b);
  }
  EXPECT_EQ(byte_level::encode(" "), "\xC4\xA0");   // 'Ġ'
  EXPECT_EQ(byte_level::encode("\n"), "\xC4\x8A");  // 'Ċ'
  EXPECT_EQ(byte_level::encode("A"), "A");
}

}  // namespace
}  // namespace l2kv
