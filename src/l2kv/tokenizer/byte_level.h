// GPT-2's byte-level alphabet: every byte maps to one printable code point, so any byte string
// becomes a string of vocabulary characters (Llama 3, Qwen2.5/3).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace l2kv::byte_level {

// The byte-level characters of `bytes`, UTF-8 encoded.
std::string encode(std::string_view bytes);

// The byte that code point `cp` stands for, if it is in the alphabet.
std::optional<unsigned char> byte_of(char32_t cp);

}  // namespace l2kv::byte_level
