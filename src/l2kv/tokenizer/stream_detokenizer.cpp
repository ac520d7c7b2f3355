#include "l2kv/tokenizer/stream_detokenizer.h"

#include <span>

#include "l2kv/tokenizer/utf8.h"

namespace l2kv {
namespace {

bool ends_with_replacement(const std::string& s) {
  return s.size() >= 3 && s.compare(s.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

}  // namespace

StreamDetokenizer::Window StreamDetokenizer::decode_window() const {
  const std::span<const int32_t> all(ids_);
  return {tokenizer_.decode(all.subspan(prefix_begin_, read_begin_ - prefix_begin_), skip_special_),
          tokenizer_.decode(all.subspan(prefix_begin_), skip_special_)};
}

std::string StreamDetokenizer::push(int32_t id) {
  ids_.push_back(id);
  const auto [prefix, full] = decode_window();
  // An incomplete character decodes to U+FFFD at the end: wait for the next token.
  if (full.size() <= prefix.size() || ends_with_replacement(full)) return {};
  std::string piece = full.substr(prefix.size());
  prefix_begin_ = read_begin_;
  read_begin_ = ids_.size();
  return piece;
}

std::string StreamDetokenizer::finish() {
  const auto [prefix, full] = decode_window();
  read_begin_ = prefix_begin_ = ids_.size();
  return full.size() > prefix.size() ? full.substr(prefix.size()) : std::string();
}

}  // namespace l2kv
