#include "l2kv/chat/text_case.h"

#include <unicode/locid.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf8.h>

#include <cstdint>
#include <vector>

#include "l2kv/tokenizer/utf8.h"

namespace l2kv::jinja {
namespace {

bool is_ascii(std::string_view text) {
  for (const char c : text)
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  return true;
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
      // One character as a whole (no word BreakIterator, which toTitle would build on every
      // call: a 1 MB text of words took 1.4 s), and no lower-casing of what follows it.
      s.toTitle(
          nullptr, icu::Locale::getRoot(),
          U_TITLECASE_WHOLE_STRING | U_TITLECASE_NO_BREAK_ADJUSTMENT | U_TITLECASE_NO_LOWERCASE);
      break;
  }
  s.toUTF8String(out);
}

// The code points of `text` with their bytes; an invalid byte sequence is c < 0 with its own
// bytes (copied, not replaced).
struct CodePoint {
  UChar32 c;
  std::string_view bytes;
};
std::vector<CodePoint> code_points(std::string_view text) {
  std::vector<CodePoint> out;
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const auto size = static_cast<int32_t>(text.size());
  int32_t i = 0;
  while (i < size) {
    const int32_t start = i;
    UChar32 c = 0;
    U8_NEXT(bytes, i, size, c);
    out.push_back({c, text.substr(static_cast<size_t>(start), static_cast<size_t>(i - start))});
  }
  return out;
}

// One code point in `how`'s case; an invalid byte sequence is kept as it is.
void append_in_case(const CodePoint& cp, Case how, std::string& out) {
  if (cp.c < 0)
    out += cp.bytes;
  else
    append_mapped(cp.c, how, out);
}

// Python's "cased": Lu, Ll, Lt (Unicode's Cased property).
bool is_cased(UChar32 c) {
  return c >= 0 && u_hasBinaryProperty(c, UCHAR_CASED);
}

bool is_case_ignorable(UChar32 c) {
  return c >= 0 && u_hasBinaryProperty(c, UCHAR_CASE_IGNORABLE);
}

// Lower case of text[i] in its string, as Python's str.lower() makes it: a capital sigma that
// ends a word (a cased letter before it and none after, case-ignorable ones skipped) becomes
// final sigma. A character that is both case-ignorable and cased (U+02B0, U+0345) is skipped,
// as Python and ICU skip it.
void append_lower_in_context(const std::vector<CodePoint>& text, size_t i, std::string& out) {
  constexpr UChar32 kCapitalSigma = 0x03A3, kFinalSigma = 0x03C2;
  if (text[i].c == kCapitalSigma) {
    // Whether the first character from `j` on (in `step`'s direction) that is not
    // case-ignorable is cased.
    auto cased_beyond_ignorable = [&](size_t j, int step) {
      for (; j < text.size(); j += static_cast<size_t>(step))  // j wraps past 0 going back
        if (!is_case_ignorable(text[j].c)) return is_cased(text[j].c);
      return false;
    };
    const bool before = i > 0 && cased_beyond_ignorable(i - 1, -1);
    const bool after = cased_beyond_ignorable(i + 1, 1);
    if (before && !after) {
      icu::UnicodeString(kFinalSigma).toUTF8String(out);
      return;
    }
  }
  append_in_case(text[i], Case::kLower, out);
}

// Python's str.isspace() for one code point.
bool is_python_space(UChar32 c) {
  return c >= 0 && (u_isUWhiteSpace(c) || (c >= 0x1c && c <= 0x1f));
}

// piece[0].upper() + piece[1:].lower(): the rest is lower-cased as a string of its own.
void append_first_upper(std::string_view piece, std::string& out) {
  const std::vector<CodePoint> all = code_points(piece);
  if (all.empty()) return;
  append_in_case(all[0], Case::kUpper, out);
  const std::vector<CodePoint> rest(all.begin() + 1, all.end());
  for (size_t i = 0; i < rest.size(); ++i) append_lower_in_context(rest, i, out);
}

// str.upper() or str.lower(): each code point's full mapping (the root locale's: no language's
// special rules), final sigma in context. Valid UTF-8 goes through ICU's whole-string mapping
// (5-10x faster than one mapping a code point); text with invalid bytes is mapped a code point
// at a time and keeps them, as capitalize() and the titles keep them.
std::string change_case(std::string_view text, Case how) {
  std::string out;
  if (is_ascii(text)) {
    out = text;
    const char from = how == Case::kUpper ? 'a' : 'A', to = how == Case::kUpper ? 'A' : 'a';
    for (char& c : out)
      if (c >= from && c <= from + 25) c = static_cast<char>(c - from + to);
    return out;
  }
  if (utf8::is_valid(text)) {
    icu::UnicodeString s = icu::UnicodeString::fromUTF8(
        icu::StringPiece(text.data(), static_cast<int32_t>(text.size())));
    if (how == Case::kUpper)
      s.toUpper(icu::Locale::getRoot());
    else
      s.toLower(icu::Locale::getRoot());
    s.toUTF8String(out);
    return out;
  }
  out.reserve(text.size());
  const std::vector<CodePoint> all = code_points(text);
  for (size_t i = 0; i < all.size(); ++i) {
    if (how == Case::kLower)
      append_lower_in_context(all, i, out);
    else
      append_in_case(all[i], how, out);
  }
  return out;
}

}  // namespace

std::string to_upper(std::string_view text) {
  return change_case(text, Case::kUpper);
}

std::string to_lower(std::string_view text) {
  return change_case(text, Case::kLower);
}

std::string capitalize(std::string_view text) {
  const std::vector<CodePoint> all = code_points(text);
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < all.size(); ++i) {
    if (i > 0)
      append_lower_in_context(all, i, out);  // the first character is context too, as in Python
    else
      append_in_case(all[i], Case::kTitle, out);
  }
  return out;
}

std::string python_title(std::string_view text) {
  const std::vector<CodePoint> all = code_points(text);
  std::string out;
  out.reserve(text.size());
  bool previous_cased = false;
  for (size_t i = 0; i < all.size(); ++i) {
    if (previous_cased)
      append_lower_in_context(all, i, out);
    else
      append_in_case(all[i], Case::kTitle, out);
    previous_cased = is_cased(all[i].c);
  }
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
  for (const CodePoint& cp : code_points(text)) {
    const bool separator = is_separator(cp.c);
    if (separator != in_separators && at > piece_start) flush(at);
    in_separators = separator;
    at += cp.bytes.size();
  }
  flush(text.size());
  return out;
}

}  // namespace l2kv::jinja
