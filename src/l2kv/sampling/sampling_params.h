// What a request asks of sampling and stopping, with vLLM's names and defaults. validate()
// rejects impossible values with a message naming the field, before the request is queued.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace l2kv {

// Temperatures below this are greedy (vLLM's rule): dividing logits by 1e-38 makes infinities.
inline constexpr float kGreedyTemperature = 1e-5f;
// Most logit_bias entries per request (the figure OpenAI's API allows).
inline constexpr int32_t kMaxLogitBias = 300;
inline constexpr float kMaxLogitBiasValue = 100.f;  // each bias in [-100, 100]

struct SamplingParams {
  float temperature = 1.0f;         // < kGreedyTemperature (0 included) = greedy
  int32_t top_k = -1;               // -1 (or 0) = no limit
  float top_p = 1.0f;               // in (0, 1]
  float min_p = 0.0f;               // in [0, 1]
  float repetition_penalty = 1.0f;  // > 0; 1 = off; over prompt and output tokens
  float presence_penalty = 0.0f;    // in [-2, 2]; over output tokens
  float frequency_penalty = 0.0f;   // in [-2, 2]; over output tokens
  std::optional<uint64_t> seed;     // unset: the engine draws one
  int32_t max_tokens = 16;          // >= 1
  int32_t min_tokens = 0;  // in [0, max_tokens]: stop tokens masked, stop strings wait until then
  // Stop strings (part of the output only with the next flag), applied by the output side
  // (OutputProcessor) on the text; the engine, which sees token ids only, does not read them.
  std::vector<std::string> stop;
  bool include_stop_str_in_output = false;  // vLLM's: the matched stop string ends the text
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  int32_t logprobs = -1;  // -1: none; 0: the chosen token's; N: also the N most likely
  bool skip_special_tokens = true;
  // (token, bias) added to the raw logits before penalties and temperature (OpenAI's
  // logit_bias); distinct tokens, at most kMaxLogitBias, each bias in [-100, 100].
  std::vector<std::pair<int32_t, float>> logit_bias;
  // vLLM's allowed_token_ids: sampling picks only among these tokens (empty: any token). EOS
  // too ends the output only when it is among them.
  std::vector<int32_t> allowed_token_ids;

  bool greedy() const { return temperature < kGreedyTemperature; }
  // Whether a penalty applies: sampling then reads the prompt and output tokens.
  bool penalized() const {
    return repetition_penalty != 1.f || presence_penalty != 0.f || frequency_penalty != 0.f;
  }
  // Whether sampling rewrites some logits before the masks (penalties or logit_bias).
  bool adjusts_logits() const { return penalized() || !logit_bias.empty(); }

  // Throws l2kv::Error naming the first invalid field. `vocab_size` bounds stop_token_ids and
  // the logit_bias tokens.
  void validate(int64_t vocab_size) const;
  // The part of validate() the output side needs, which knows no vocabulary: no empty stop
  // string.
  void validate_stop() const;
};

inline constexpr int32_t kMaxLogprobs = 20;

}  // namespace l2kv
