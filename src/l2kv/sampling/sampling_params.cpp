#include "l2kv/sampling/sampling_params.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

// "<field> must be <rule>, got <value>." as vLLM words it.
template <typename T>
[[noreturn]] void reject(const char* field, const char* rule, const T& value) {
  std::ostringstream message;
  message << field << " must be " << rule << ", got " << value << ".";
  throw Error(message.str());
}

}  // namespace

void SamplingParams::validate(int64_t vocab_size) const {
  if (!std::isfinite(temperature) || temperature < 0.f)
    reject("temperature", "a finite number >= 0", temperature);
  if (!(top_p > 0.f && top_p <= 1.f)) reject("top_p", "in (0, 1]", top_p);
  if (top_k < -1) reject("top_k", "-1 (or 0) to disable, or at least 1", top_k);
  if (!(min_p >= 0.f && min_p <= 1.f)) reject("min_p", "in [0, 1]", min_p);
  if (!std::isfinite(repetition_penalty) || repetition_penalty <= 0.f)
    reject("repetition_penalty", "a finite number > 0", repetition_penalty);
  if (!(presence_penalty >= -2.f && presence_penalty <= 2.f))
    reject("presence_penalty", "in [-2, 2]", presence_penalty);
  if (!(frequency_penalty >= -2.f && frequency_penalty <= 2.f))
    reject("frequency_penalty", "in [-2, 2]", frequency_penalty);
  if (max_tokens < 1) reject("max_tokens", "at least 1", max_tokens);
  if (min_tokens < 0) reject("min_tokens", "at least 0", min_tokens);
  if (min_tokens > max_tokens) {
    std::ostringstream rule;
    rule << "<= max_tokens (" << max_tokens << ")";
    reject("min_tokens", rule.str().c_str(), min_tokens);
  }
  if (logprobs < -1 || logprobs > kMaxLogprobs) {
    std::ostringstream rule;
    rule << "-1 (none) or in [0, " << kMaxLogprobs << "]";
    reject("logprobs", rule.str().c_str(), logprobs);
  }
  for (int32_t id : stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      std::ostringstream rule;
      rule << "token ids in [0, " << vocab_size << ")";
      reject("stop_token_ids", rule.str().c_str(), id);
    }
  }
  if (logit_bias.size() > static_cast<size_t>(kMaxLogitBias)) {
    std::ostringstream rule;
    rule << "at most " << kMaxLogitBias << " tokens";
    reject("logit_bias", rule.str().c_str(), logit_bias.size());
  }
  std::vector<int32_t> biased;
  biased.reserve(logit_bias.size());
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= vocab_size) {
      std::ostringstream rule;
      rule << "keyed by token ids in [0, " << vocab_size << ")";
      reject("logit_bias", rule.str().c_str(), id);
    }
    if (!(bias >= -kMaxLogitBiasValue && bias <= kMaxLogitBiasValue))
      reject("logit_bias", "values in [-100, 100]", bias);
    biased.push_back(id);
  }
  std::sort(biased.begin(), biased.end());
  if (auto dup = std::adjacent_find(biased.begin(), biased.end()); dup != biased.end())
    reject("logit_bias", "keyed by distinct token ids; repeated", *dup);
  validate_stop();
  for (int32_t id : allowed_token_ids) {
    if (id < 0 || id >= vocab_size) {
      std::ostringstream rule;
      rule << "token ids in [0, " << vocab_size << ")";
      reject("allowed_token_ids", rule.str().c_str(), id);
    }
  }
}

void SamplingParams::validate_stop() const {
  for (const std::string& s : stop)
    if (s.empty()) throw Error("stop must not contain empty strings.");
}

}  // namespace l2kv
