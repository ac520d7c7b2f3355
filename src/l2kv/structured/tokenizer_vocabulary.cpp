#include "l2kv/structured/tokenizer_vocabulary.h"

#include <algorithm>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv::structured {

TokenVocabulary tokenizer_vocabulary(const Tokenizer& tokenizer, int64_t vocab_size,
                                     const std::vector<int32_t>& eos_ids) {
  std::vector<std::string> bytes(static_cast<size_t>(vocab_size));
  const int32_t known = static_cast<int32_t>(std::min<int64_t>(vocab_size, tokenizer.vocab_size()));
  for (int32_t id = 0; id < known; ++id) {
    if (tokenizer.is_special(id)) continue;
    try {
      bytes[id] = tokenizer.token_bytes(id);
    } catch (const Error&) {
      // An id the tokenizer does not use: never allowed.
    }
  }
  std::vector<int32_t> eos;
  for (int32_t id : eos_ids)
    if (id >= 0 && id < vocab_size) eos.push_back(id);
  return TokenVocabulary(std::move(bytes), std::move(eos));
}

}  // namespace l2kv::structured
