#include "l2kv/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <mutex>

#include "l2kv/core/error.h"

namespace l2kv {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  std::string pattern;  // for messages
  // Match data is per call site; one per thread keeps find_all reentrant without allocation.
  static pcre2_match_data* thread_match_data() {
    thread_local struct Holder {
      pcre2_match_data* data = pcre2_match_data_create(16, nullptr);
      ~Holder() { pcre2_match_data_free(data); }
    } holder;
    return holder.data;
  }
};

Regex::Regex(const std::string& pattern) : impl_(std::make_unique<Impl>()) {
  impl_->pattern = pattern;
  int error = 0;
  PCRE2_SIZE offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &error, &offset, nullptr);
  if (impl_->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    throw Error("regex '" + pattern + "' does not compile at offset " + std::to_string(offset) +
                ": " + reinterpret_cast<const char*>(message));
  }
  pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter
}

Regex::~Regex() {
  if (impl_->code) pcre2_code_free(impl_->code);
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  pcre2_match_data* data = Impl::thread_match_data();
  size_t start = 0;
  while (start <= text.size()) {
    // Input is valid UTF-8 (the tokenizer repairs it first), so skip PCRE2's check.
    const int rc = pcre2_match(impl_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(),
                               start, PCRE2_NO_UTF_CHECK, data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      // Typically PCRE2's match or depth limit: a pattern that backtracks without end on this
      // text (a tokenizer.json pre-tokenizer's Split regex, say).
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      const std::string what = "the regex /" + impl_->pattern.substr(0, 200) +
                               "/ failed on a text of " + std::to_string(text.size()) +
                               " bytes: " + reinterpret_cast<const char*>(message) +
                               " (PCRE2 error " + std::to_string(rc) + ")";
      if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
          rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_JIT_STACKLIMIT)
        throw RegexLimitError(what);
      throw Error(what);
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(data);
    const size_t begin = ovector[0], end = ovector[1];
    if (end == begin) {  // empty match: step one code point
      if (begin >= text.size()) break;
      start = begin + 1;
      while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80)
        ++start;
      continue;
    }
    matches.emplace_back(begin, end);
    start = end;
  }
  return matches;
}

}  // namespace l2kv
