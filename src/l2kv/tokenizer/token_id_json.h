// Token ids as tokenizer.json writes them (vocab, added_tokens, post-processor ids), checked
// before use: an id is an index into tables sized by the largest one, so a float, a negative
// or an absurd id must be an error, not undefined conversion or a multi-gigabyte table.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {

// Far above any real vocabulary (~260 K today).
inline constexpr int64_t kMaxVocabSize = int64_t{1} << 24;

// `value` as a token id in [0, kMaxVocabSize); `what` names it in the error.
inline int32_t token_id_from_json(const nlohmann::json& value, const std::string& what) {
  if (!value.is_number_integer() ||
      (value.is_number_unsigned()
           ? value.get<uint64_t>() >= uint64_t{kMaxVocabSize}
           : value.get<int64_t>() < 0 || value.get<int64_t>() >= kMaxVocabSize))
    throw Error("tokenizer.json: " + what + " has id " + value.dump() + ", not an integer in [0, " +
                std::to_string(kMaxVocabSize) + ")");
  return static_cast<int32_t>(value.get<int64_t>());
}

}  // namespace l2kv
