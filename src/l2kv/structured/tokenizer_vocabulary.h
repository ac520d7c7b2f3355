// The TokenVocabulary of a model's tokenizer: each token's bytes as it adds them inside a text
// (Tokenizer::token_bytes); special tokens have none, so grammars never allow them.
#pragma once

#include <cstdint>
#include <vector>

#include "l2kv/structured/grammar_matcher.h"

namespace l2kv {
class Tokenizer;
}

namespace l2kv::structured {

// `vocab_size` is the model's (ids the tokenizer lacks get no bytes); `eos_ids` end the text.
TokenVocabulary tokenizer_vocabulary(const Tokenizer& tokenizer, int64_t vocab_size,
                                     const std::vector<int32_t>& eos_ids);

}  // namespace l2kv::structured
