#include "l2kv/chat/text_case.h"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <cstdint>

namespace l2kv::jinja {
namespace {

bool is_ascii(std::string_view text) {
  for (const char c : text)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
}

icu::UnicodeString from_utf8(std::string_view text) {
  return icu::UnicodeString::fromUTF8(
      icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
}

std::string to_utf8(const icu::UnicodeString& s) {
  std::string out;
  s.toUTF8String(out);
  return out;
}

enum class Case { kUpper, kLower, kTitle };

// One code point's full mapping (ß -> "SS" upper, "Ss" title).
void append_mapped(UChar32 c, Case how, std::string& out) {
  icu::UnicodeString s(c);
  switch (how) {
    case Case::kUpper:
      s.toUpper(icu::Locale::getRoot());
      break;
    case Case::kLower:
      s.toLower(icu::Locale::getRoot());
      break;
    case Case::kTitle:
      // One character: no word breaking, and no lower-casing of what follows it.
      s.toTitle(nullptr, icu::Locale::getRoot(),
                U_TITLECASE_NO_BREAK_ADJUSTMENT | U_TITLECASE_NO_LOWERCASE);
      break;
  }
  s.toUTF8String(out);
}

// Calls f(code point, its bytes) for each code point of `text`; invalid bytes pass as U+FFFD
// with their own bytes (so they are copied, not replaced).
template <typename F>
void for_each_code_point(std::string_view text, F f) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const auto size = static_cast<int32_t>(text.size());
  int32_t i = 0;
  while (i < size) {
    const int32_t start = i;
    UChar32 c = 0;
    U8_NEXT(bytes, i, size, c);
    f(c, text.substr(static_cast<size_t>(start), static_cast<size_t>(i - start)));
  }
}

// Python's "cased": Lu, Ll, Lt (Unicode's Cased property).
bool is_cased(UChar32 c) {
  return c >= 0 && u_hasBinaryProperty(c, UCHAR_CASED);
}

// Python's str.isspace() for one code point.
bool is_python_space(UChar32 c) {
  return c >= 0 && (u_isUWhiteSpace(c) || (c >= 0x1c && c <= 0x1f));
}

// piece[0].upper() + piece[1:].lower()
void append_first_upper(std::string_view piece, std::string& out) {
  bool first = true;
  for_each_code_point(piece, [&](UChar32 c, std::string_view bytes) {
    if (c < 0)
      out += bytes;
    else
      append_mapped(c, first ? Case::kUpper : Case::kLower, out);
    first = false;
  });
}

}  // namespace

std::string to_upper(std::string_view text) {
  if (is_ascii(text)) {
    std::string out(text);
    for (char& c : out)
      if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    return out;
  }
  return to_utf8(from_utf8(text).toUpper(icu::Locale::getRoot()));
}

std::string to_lower(std::string_view text) {
  if (is_ascii(text)) {
    std::string out(text);
    for (char& c : out)
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
  }
  return to_utf8(from_utf8(text).toLower(icu::Locale::getRoot()));
}

std::string capitalize(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool first = true;
  for_each_code_point(text, [&](UChar32 c, std::string_view bytes) {
    if (c < 0)
      out += bytes;
    else
      append_mapped(c, first ? Case::kTitle : Case::kLower, out);
    first = false;
  });
  return out;
}

std::string python_title(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool previous_cased = false;
  for_each_code_point(text, [&](UChar32 c, std::string_view bytes) {
    if (c < 0)
      out += bytes;
    else
      append_mapped(c, previous_cased ? Case::kLower : Case::kTitle, out);
    previous_cased = is_cased(c);
  });
  return out;
}

std::string jinja_title(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  auto is_separator = [](UChar32 c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_python_space(c);
  };
  // Pieces alternate between separator runs and the text between them; a separator run
  // has no case to change, so only the others are mapped.
  size_t piece_start = 0, at = 0;
  bool in_separators = false;
  auto flush = [&](size_t end) {
    const std::string_view piece = text.substr(piece_start, end - piece_start);
    if (in_separators)
      out += piece;
    else
      append_first_upper(piece, out);
    piece_start = end;
  };
  for_each_code_point(text, [&](UChar32 c, std::string_view bytes) {
    const bool separator = is_separator(c);
    if (separator != in_separators && at > piece_start) flush(at);
    in_separators = separator;
    at += bytes.size();
  });
  flush(text.size());
  return out;
}

}  // namespace l2kv::jinja
