// A compiled Unicode regular expression (PCRE2, UTF + Unicode properties, JIT where available),
// as tokenizer.json's Split pre-tokenizers need: \p{L}, look-ahead, inline (?i:...).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "l2kv/core/error.h"

namespace l2kv {

// find_all's error where the text itself is too much for the pattern: PCRE2's match, depth,
// heap or JIT stack limit reached on it. A server answers it as a bad request (other regex
// failures are its own).
class RegexLimitError : public Error {
 public:
  using Error::Error;
};

class Regex {
 public:
  // Throws l2kv::Error with PCRE2's message and offset when `pattern` does not compile.
  explicit Regex(const std::string& pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Byte ranges [begin, end) of all non-overlapping, non-empty matches, left to right.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace l2kv
