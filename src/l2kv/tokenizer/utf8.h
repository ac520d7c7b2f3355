// UTF-8 helpers of the tokenizer: code point iteration, encoding, and lossy repair of invalid
// input (each maximal invalid subsequence becomes U+FFFD, as WHATWG TextDecoder and Rust's
// String::from_utf8_lossy do).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace l2kv::utf8 {

inline constexpr char32_t kReplacement = 0xFFFD;

// Length of the valid UTF-8 sequence starting at s[i], or 0 when it is invalid or truncated.
size_t valid_sequence_length(std::string_view s, size_t i);

// True when all of `s` is valid UTF-8.
bool is_valid(std::string_view s);

// `s` with every invalid subsequence replaced by U+FFFD.
std::string repair(std::string_view s);

// Appends the UTF-8 encoding of `cp`.
void append(std::string& out, char32_t cp);
// The UTF-8 encoding of `cp`.
std::string encode(char32_t cp);

// Decodes the (valid) sequence at s[i] and advances i past it.
char32_t next(std::string_view s, size_t& i);

}  // namespace l2kv::utf8
