#include "l2kv/tokenizer/byte_level.h"

#include <array>
#include <unordered_map>

#include "l2kv/tokenizer/utf8.h"

namespace l2kv::byte_level {
namespace {

struct Tables {
  std::array<std::string, 256> byte_to_chars;
  std::unordered_map<char32_t, unsigned char> char_to_byte;
  Tables() {
    // Printable Latin-1 bytes keep their code point; the others are moved to U+0100 and up.
    char32_t shifted = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      const char32_t cp = printable ? static_cast<char32_t>(b) : shifted++;
      utf8::append(byte_to_chars[b], cp);
      char_to_byte[cp] = static_cast<unsigned char>(b);
    }
  }
};

const Tables& tables() {
  static const Tables t;
  return t;
}

}  // namespace

std::string encode(std::string_view bytes) {
  const Tables& t = tables();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) out += t.byte_to_chars[b];
  return out;
}

std::optional<unsigned char> byte_of(char32_t cp) {
  const Tables& t = tables();
  const auto it = t.char_to_byte.find(cp);
  if (it == t.char_to_byte.end()) return std::nullopt;
  return it->second;
}

}  // namespace l2kv::byte_level
