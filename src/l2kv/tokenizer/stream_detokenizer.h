// Incremental detokenization for streaming: feed ids one at a time, get text only once it is
// complete UTF-8. A character split across tokens comes out whole, and the concatenation of
// all pieces (with finish()) equals decode() of all ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv {

class StreamDetokenizer {
 public:
  explicit StreamDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens = false)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}

  // The new text that `id` completes; empty while a character is still incomplete.
  std::string push(int32_t id);
  // Whatever is left (an incomplete character becomes U+FFFD, as in decode()).
  std::string finish();

 private:
  // Text of ids_[prefix_begin_, read_begin_) and of ids_[prefix_begin_, end).
  struct Window {
    std::string prefix, full;
  };
  Window decode_window() const;

  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  // Text of ids_[prefix_begin_, read_begin_) is already emitted; decoding from prefix_begin_
  // keeps decoders that look at neighbouring tokens (leading-space strip) consistent.
  size_t prefix_begin_ = 0;
  size_t read_begin_ = 0;
};

}  // namespace l2kv
