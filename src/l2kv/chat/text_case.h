// Case changes of UTF-8 text as a Jinja template (that is, Python) makes them, with ICU's
// full case mappings in the root locale: "straße"|upper is "STRASSE", and Greek, Cyrillic or
// accented Latin text changes case too (the templates' upper/lower were ASCII-only).
#pragma once

#include <string>
#include <string_view>

namespace l2kv::jinja {

// str.upper() / str.lower().
std::string to_upper(std::string_view text);
std::string to_lower(std::string_view text);
// str.capitalize(): the first character in title case, the rest in lower case (also Jinja's
// capitalize filter).
std::string capitalize(std::string_view text);
// str.title(): a cased character after an uncased one (or at the start) in title case, every
// other character in lower case ("a1b" -> "A1B", "they're" -> "They'Re").
std::string python_title(std::string_view text);
// Jinja's title filter: the text split into pieces at runs of '-', whitespace, '(', '{', '['
// and '<' (kept), each piece's first character upper-cased and the rest lower-cased
// ("they're" -> "They're", "a-b c" -> "A-B C").
std::string jinja_title(std::string_view text);

}  // namespace l2kv::jinja
