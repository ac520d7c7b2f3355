#include "l2kv/tokenizer/stream_detokenizer.h"

#include <span>

#include "l2kv/tokenizer/utf8.h"

namespace l2kv {
namespace {

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

std::string StreamDetokenizer::push(int32_t id) {
  ids_.push_back(id);
  const std::span<const int32_t> all(ids_);
  const std::string prefix =
      tokenizer_.decode(all.subspan(prefix_begin_, read_begin_ - prefix_begin_), skip_special_);
  const std::string full = tokenizer_.decode(all.subspan(prefix_begin_), skip_special_);
  // An incomplete character decodes to U+FFFD at the end: wait for the next token.
  if (full.size() <= prefix.size() || ends_with_replacement(full)) return {};
  std::string piece = full.substr(prefix.size());
  prefix_begin_ = read_begin_;
  read_begin_ = ids_.size();
  return piece;
}

std::string StreamDetokenizer::finish() {
  const std::span<const int32_t> all(ids_);
  const std::string prefix =
      tokenizer_.decode(all.subspan(prefix_begin_, read_begin_ - prefix_begin_), skip_special_);
  const std::string full = tokenizer_.decode(all.subspan(prefix_begin_), skip_special_);
  read_begin_ = prefix_begin_ = ids_.size();
  return full.size() > prefix.size() ? full.substr(prefix.size()) : std::string();
}

}  // namespace l2kv
