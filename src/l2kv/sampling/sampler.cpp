// The reference sampler: plain loops in the order of sampler.h's definition, double precision
// for every sum, exp and log, so that the GPU sampler can be checked against it bit for bit.
#include "l2kv/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <unordered_map>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// The largest value, lowest id on ties.
int32_t argmax_lowest_id(std::span<const float> x) {
  int32_t best = 0;
  for (size_t i = 1; i < x.size(); ++i)
    if (x[i] > x[best]) best = static_cast<int32_t>(i);
  return best;
}

void check_row(const SamplingRow& row, int64_t vocab) {
  if (row.params == nullptr) throw Error("sampling: a row has no SamplingParams");
  if (vocab < 1) throw Error("sampling: vocab must be at least 1, got " + std::to_string(vocab));
  if (!row.allowed_tokens.empty() &&
      static_cast<int64_t>(row.allowed_tokens.size()) != (vocab + 31) / 32)
    throw Error("sampling: the allowed-token mask has " +
                std::to_string(row.allowed_tokens.size()) + " words, expected " +
                std::to_string((vocab + 31) / 32));
  for (auto tokens : {row.prompt_tokens, row.output_tokens})
    for (int32_t t : tokens)
      if (t < 0 || t >= vocab)
        throw Error("sampling: history token " + std::to_string(t) + " outside [0, " +
                    std::to_string(vocab) + ")");
}

// Step 4 on adjusted logits x: top-k, then top-p over the top-k tokens, and min-p.
std::vector<uint8_t> kept_tokens(std::span<const float> x, const SamplingParams& params) {
  const int64_t vocab = static_cast<int64_t>(x.size());
  const double m = x[argmax_lowest_id(x)];
  std::vector<uint8_t> kept(x.size(), 1);

  // top-k: keep every token at or above the k-th largest logit.
  float floor = -std::numeric_limits<float>::infinity();
  if (params.top_k > 0 && params.top_k < vocab) {
    std::vector<float> sorted(x.begin(), x.end());
    std::nth_element(sorted.begin(), sorted.begin() + (params.top_k - 1), sorted.end(),
                     std::greater<float>());
    floor = sorted[params.top_k - 1];
  }

  // top-p: walk the top-k tokens from the largest logit down, a group of equal logits at a
  // time; the threshold is the first logit at which the mass reaches top_p of the total.
  if (params.top_p < 1.f) {
    std::vector<int32_t> order;
    for (int32_t i = 0; i < vocab; ++i)
      if (x[i] >= floor) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
    double total = 0;
    for (int32_t i : order) total += std::exp(static_cast<double>(x[i]) - m);
    const double target = static_cast<double>(params.top_p) * total;
    double cumulative = 0;
    float threshold = x[order.back()];  // rounding fallback: keep all top-k tokens
    for (size_t g = 0; g < order.size();) {
      size_t end = g;
      while (end < order.size() && x[order[end]] == x[order[g]]) {
        cumulative += std::exp(static_cast<double>(x[order[end]]) - m);
        ++end;
      }
      if (cumulative >= target) {
        threshold = x[order[g]];
        break;
      }
      g = end;
    }
    floor = std::max(floor, threshold);
  }

  const bool use_min_p = params.min_p > 0.f;
  const double log_min_p = std::log(static_cast<double>(params.min_p));
  for (int64_t i = 0; i < vocab; ++i) {
    const bool min_p_ok = !use_min_p || static_cast<double>(x[i]) - m >= log_min_p;
    kept[i] = x[i] >= floor && min_p_ok;
  }
  return kept;
}

// Step 5: the exponential race over kept tokens.
int32_t race(std::span<const float> x, std::span<const uint8_t> kept, const SamplingRow& row) {
  int32_t best = -1;
  double best_score = -kInf;
  for (size_t i = 0; i < x.size(); ++i) {
    if (!kept[i]) continue;
    const double u = uniform_for(row.seed, row.step, static_cast<int64_t>(i));
    const double score = static_cast<double>(x[i]) - std::log(-std::log(u));
    if (score > best_score) {  // strict: lowest id on ties, -inf never a candidate
      best_score = score;
      best = static_cast<int32_t>(i);
    }
  }
  return best >= 0 ? best : argmax_lowest_id(x);
}

void fill_logprobs(std::span<const float> raw, int32_t n, SampledToken& out) {
  const double m = raw[argmax_lowest_id(raw)];
  double sum = 0;
  for (float r : raw) sum += std::exp(static_cast<double>(r) - m);
  const double lse = m + std::log(sum);
  auto logprob = [&](int32_t i) { return static_cast<float>(static_cast<double>(raw[i]) - lse); };
  out.logprob = logprob(out.token);
  out.top_logprobs.clear();
  n = static_cast<int32_t>(std::min<int64_t>(n, static_cast<int64_t>(raw.size())));
  if (n <= 0) return;
  std::vector<int32_t> ids(raw.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), [&](int32_t a, int32_t b) {
    return raw[a] > raw[b] || (raw[a] == raw[b] && a < b);
  });
  for (int32_t k = 0; k < n; ++k) out.top_logprobs.emplace_back(ids[k], logprob(ids[k]));
}

}  // namespace

PromptLogprob prompt_logprob_on_cpu(std::span<const float> row_logits, int32_t target,
                                    int32_t top) {
  if (target < 0 || static_cast<size_t>(target) >= row_logits.size())
    throw Error("prompt_logprob_on_cpu: token " + std::to_string(target) + " outside a row of " +
                std::to_string(row_logits.size()) + " logits");
  PromptLogprob out;
  out.token = target;
  SampledToken sampled;
  sampled.token = target;
  fill_logprobs(row_logits, std::max(top, 0), sampled);
  out.logprob = sampled.logprob;
  out.top_logprobs = std::move(sampled.top_logprobs);
  const float x = row_logits[static_cast<size_t>(target)];
  out.rank = 1 + static_cast<int32_t>(std::count_if(row_logits.begin(), row_logits.end(),
                                                    [x](float r) { return r > x; }));
  return out;
}

void apply_token_bitmask_on_cpu(std::span<float> row_logits, std::span<const uint32_t> allowed) {
  if (static_cast<int64_t>(allowed.size()) != (static_cast<int64_t>(row_logits.size()) + 31) / 32)
    throw Error("apply_token_bitmask_on_cpu: " + std::to_string(allowed.size()) +
                " mask words for a row of " + std::to_string(row_logits.size()));
  for (size_t t = 0; t < row_logits.size(); ++t)
    if (((allowed[t >> 5] >> (t & 31)) & 1) == 0)
      row_logits[t] = -std::numeric_limits<float>::infinity();
}

std::vector<float> adjusted_logits_on_cpu(std::span<const float> row_logits,
                                          const SamplingRow& row) {
  const int64_t vocab = static_cast<int64_t>(row_logits.size());
  check_row(row, vocab);
  const SamplingParams& p = *row.params;
  std::vector<float> z(row_logits.begin(), row_logits.end());
  if (!row.allowed_tokens.empty()) apply_token_bitmask_on_cpu(z, row.allowed_tokens);
  for (const auto& [t, bias] : p.logit_bias) {
    if (t < 0 || t >= vocab)
      throw Error("sampling: logit_bias token " + std::to_string(t) + " outside [0, " +
                  std::to_string(vocab) + ")");
    z[t] = z[t] + bias;
  }

  // Distinct tokens seen (prompt or output) and output counts.
  std::unordered_map<int32_t, int64_t> output_count;
  for (int32_t t : row.output_tokens) ++output_count[t];
  std::vector<int32_t> seen(row.prompt_tokens.begin(), row.prompt_tokens.end());
  seen.insert(seen.end(), row.output_tokens.begin(), row.output_tokens.end());
  std::sort(seen.begin(), seen.end());
  seen.erase(std::unique(seen.begin(), seen.end()), seen.end());

  for (int32_t t : seen) {
    float v = z[t];
    if (p.repetition_penalty != 1.f)
      v = v > 0.f ? v / p.repetition_penalty : v * p.repetition_penalty;
    auto it = output_count.find(t);
    if (it != output_count.end()) {
      // frequency * count is exact in double, so a fused multiply-add cannot change it.
      const double penalty =
          static_cast<double>(p.presence_penalty) +
          static_cast<double>(p.frequency_penalty) * static_cast<double>(it->second);
      v = static_cast<float>(static_cast<double>(v) - penalty);
    }
    z[t] = v;
  }
  if (!p.greedy())
    for (float& v : z) v = v / p.temperature;
  for (float& v : z)
    if (std::isnan(v)) v = -std::numeric_limits<float>::infinity();
  return z;
}

std::vector<uint8_t> sampling_mask_on_cpu(std::span<const float> row_logits,
                                          const SamplingRow& row) {
  const std::vector<float> x = adjusted_logits_on_cpu(row_logits, row);
  if (row.params->greedy()) {
    std::vector<uint8_t> kept(x.size(), 0);
    kept[argmax_lowest_id(x)] = 1;
    return kept;
  }
  return kept_tokens(x, *row.params);
}

std::vector<SampledToken> sample_on_cpu(std::span<const float> logits, int64_t vocab,
                                        std::span<const SamplingRow> rows) {
  if (vocab < 1 || logits.size() != rows.size() * static_cast<size_t>(vocab))
    throw Error("sample_on_cpu: logits hold " + std::to_string(logits.size()) +
                " values, expected rows (" + std::to_string(rows.size()) + ") x vocab (" +
                std::to_string(vocab) + ")");
  std::vector<SampledToken> out(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    const SamplingRow& row = rows[r];
    std::span<const float> raw = logits.subspan(r * vocab, vocab);
    std::vector<float> allowed_raw;  // step -1, which the logprobs see too
    if (!row.allowed_tokens.empty()) {
      check_row(row, vocab);
      allowed_raw.assign(raw.begin(), raw.end());
      apply_token_bitmask_on_cpu(allowed_raw, row.allowed_tokens);
      raw = allowed_raw;
    }
    const std::vector<float> x = adjusted_logits_on_cpu(raw, row);
    const SamplingParams& p = *row.params;
    if (p.logprobs > kMaxLogprobs)
      throw Error("sample_on_cpu: logprobs " + std::to_string(p.logprobs) + " above " +
                  std::to_string(kMaxLogprobs));
    out[r].token = p.greedy() ? argmax_lowest_id(x) : race(x, kept_tokens(x, p), row);
    if (p.logprobs >= 0) fill_logprobs(raw, p.logprobs, out[r]);
  }
  return out;
}

}  // namespace l2kv
