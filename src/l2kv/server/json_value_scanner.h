// An incremental JSON scanner for one value, fed a byte at a time: it checks the value as
// nlohmann's parser does and writes it out as soon as each part is certain, so a tool call's
// arguments can be streamed while the model writes them. The text it writes for a whole value
// is what nlohmann's dump() writes for it (no whitespace, strings re-escaped, numbers
// re-printed), except that an object's repeated keys are all kept.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace l2kv::server {

class JsonValueScanner {
 public:
  enum class Mode : uint8_t {
    kCompact,  // the value as dump() writes it
    kString,   // the value must be a string; its decoded text, without quotes
    kSkip,     // checked only; nothing written
  };
  enum class Status : uint8_t {
    kMore,        // the byte was taken and the value goes on
    kDone,        // the byte was the value's last
    kDoneBefore,  // a number ended before this byte, which is not taken
    kError,       // not JSON
  };

  explicit JsonValueScanner(Mode mode) : mode_(mode) {}
  // Takes one byte; what it completes is appended to `out`. Leading whitespace is skipped.
  Status feed(char c, std::string& out);
  // The bytes taken but not yet written (a number, an escape, a multibyte character).
  std::string pending() const;

 private:
  enum class Expect : uint8_t { kValue, kValueOrEnd, kKey, kKeyOrEnd, kColon, kCommaOrEnd };
  enum class Token : uint8_t { kNone, kString, kNumber, kLiteral };

  Status begin_value(char c, std::string& out);
  Status value_done();
  Status feed_string(unsigned char c, std::string& out);
  void put_codepoint(uint32_t cp, std::string& out) const;
  void put(const std::string& s, std::string& out) const {
    if (mode_ == Mode::kCompact) out += s;
  }

  Mode mode_;
  Expect expect_ = Expect::kValue;
  Token token_ = Token::kNone;
  std::vector<char> stack_;  // '{' and '[' of the open containers
  bool key_ = false;         // the string being read is an object's key
  // String state: escape (0 none, 1 after '\', 2 \u hex, 3 after a high surrogate expecting
  // '\', 4 expecting 'u', 5 the low surrogate's hex), its hex digits, and a multibyte
  // character's bytes with the range its next byte must be in.
  int escape_ = 0;
  std::string escape_raw_;
  int hex_digits_ = 0;
  uint32_t hex_ = 0;
  uint32_t high_ = 0;
  std::string utf8_;
  int utf8_left_ = 0;
  unsigned char next_lo_ = 0x80, next_hi_ = 0xBF;
  std::string number_;
  const char* literal_ = nullptr;
  size_t literal_at_ = 0;
};

}  // namespace l2kv::server
