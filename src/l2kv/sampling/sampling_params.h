// What a request asks of sampling and stopping, with vLLM's names and defaults. validate()
// rejects impossible values with a message naming the field, before the request is queued.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace l2kv {

struct SamplingParams {
  float temperature = 1.0f;         // 0 = greedy
  int32_t top_k = -1;               // -1 (or 0) = no limit
  float top_p = 1.0f;               // in (0, 1]
  float min_p = 0.0f;               // in [0, 1]
  float repetition_penalty = 1.0f;  // > 0; 1 = off; over prompt and output tokens
  float presence_penalty = 0.0f;    // in [-2, 2]; over output tokens
  float frequency_penalty = 0.0f;   // in [-2, 2]; over output tokens
  std::optional<uint64_t> seed;     // unset: the engine draws one
  int32_t max_tokens = 16;          // >= 1
  int32_t min_tokens = 0;           // in [0, max_tokens]: stop tokens and strings wait until then
  std::vector<std::string> stop;    // stop strings (not part of the output)
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t logprobs = -1;  // -1: none; 0: the chosen token's; N: also the N most likely
  bool skip_special_tokens = true;

  bool greedy() const { return temperature == 0.f; }

  // Throws l2kv::Error naming the first invalid field. `vocab_size` bounds stop_token_ids.
  void validate(int64_t vocab_size) const;
};

inline constexpr int32_t kMaxLogprobs = 20;

}  // namespace l2kv
