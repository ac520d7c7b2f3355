// Sampling the next token of each row from its logits, identically defined on the CPU
// (sample_on_cpu, the reference) and the GPU (GpuSampler):
//  -1. allowed tokens (structured outputs): a token whose bit is clear in the row's mask gets
//      the logit -inf, before everything else, so logprobs are those of the allowed tokens
//      (on the GPU, apply_token_bitmask rewrites the logits before GpuSampler reads them);
//   0. logit_bias: logit += bias for each (token, bias) of the request (OpenAI's logit_bias);
//   1. penalties: repetition (over prompt and output tokens: logit / p if > 0, else * p),
//      presence and frequency (over output tokens: logit -= presence + frequency * count);
//   2. greedy rows (temperature below kGreedyTemperature): the largest logit, lowest id on
//      ties; done;
//   3. logits / temperature; probabilities p = softmax;
//   4. masks, each keeping ties at its threshold: top-k keeps tokens whose logit >= the k-th
//      largest; top-p keeps the tokens whose logit >= t, t the largest logit whose tokens at or
//      above it hold probability >= top_p; min-p keeps tokens with p >= min_p * max p;
//   5. the token is the argmax over kept tokens of log p_i - log(E_i), E_i = -log(u_i), with
//      u_i = uniform_for(seed, step, i): an exponential race (Gumbel-max), so a row's draw
//      depends only on its seed, its step and its logits, never on the rest of the batch.
// Logprobs are those of the raw model distribution (log_softmax of the logits before
// penalties and temperature), as vLLM reports by default.
//
// The exact arithmetic, shared by both implementations so that their masks and draws agree
// bit for bit (x = the logits after steps 0, 1 and 3, fp32; m = max x):
//   - bias and penalties: z = r, or z = r + bias (fp32) for a biased token; if seen and
//     repetition != 1: z = z > 0 ? z / rep : z * rep (fp32);
//     if count > 0: z = float(double(z) - (double(presence) + double(frequency) * count));
//     x = z / temperature (fp32 division).
//   - top-p is taken over the distribution renormalized to the top-k tokens (vLLM's order:
//     top-k, then top-p); masses are exp(double(x) - double(m)), the test is
//     mass(x >= t) >= double(top_p) * mass(top-k tokens). min-p is unaffected by the order
//     (p / max p is invariant under renormalization) and is evaluated as
//     double(x) - double(m) >= log(double(min_p)). -0 and +0 are the same logit.
//   - the race score of a kept token is double(x) - log(-log(double(u))) (log p_i minus a
//     constant); tokens whose score is -inf are not candidates; should no candidate remain,
//     the token is the largest x (lowest id on ties).
//   - a NaN x (a broken model's logit) counts as -inf: never kept, never drawn.
//   - logprob_i = float(double(r_i) - (double(max r) + log(sum_j exp(double(r_j) - max r)))).
// Both sides sum masses in double but not always in the same order (the GPU sums the row's
// total in parallel), so a top-p threshold can differ only where a cumulative mass lies within
// a few units in the last place of its target.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "l2kv/sampling/sampling_params.h"

namespace l2kv {

// One row to sample.
struct SamplingRow {
  const SamplingParams* params = nullptr;
  uint64_t seed = 0;  // the request's seed (drawn by the engine if the request set none)
  int64_t step = 0;   // index of the token being sampled within the request's output
  std::span<const int32_t> prompt_tokens;  // for the repetition penalty
  std::span<const int32_t> output_tokens;  // for all penalties
  // Structured outputs: bit t % 32 of word t / 32 set = token t allowed, (vocab + 31) / 32
  // words; empty = every token allowed (and no cost).
  std::span<const uint32_t> allowed_tokens;
};

struct SampledToken {
  int32_t token = -1;
  float logprob = 0.f;  // of `token` (filled when params->logprobs >= 0)
  std::vector<std::pair<int32_t, float>> top_logprobs;  // params->logprobs most likely, best first
};

// One prompt token's log-probability given the tokens before it (prompt logprobs).
struct PromptLogprob {
  int32_t token = -1;
  float logprob = 0.f;  // log_softmax of the raw logits, as SampledToken::logprob
  int32_t rank = 0;     // 1 + the number of tokens more likely than `token`
  std::vector<std::pair<int32_t, float>> top_logprobs;  // most likely first, lowest id on ties
};

// Random bits of a uniform_for draw.
inline constexpr int kUniformBits = 23;
// A token whose x lies more than this below the largest x of its row cannot win the race: the
// race term -log(-log u) of uniform_for's u lies in [-2.812, 16.636] (19.447 apart), and the
// largest x is always kept. The GPU sampler lets only closer tokens enter the race.
inline constexpr double kRaceReach = 19.5;

// The uniform draw in (0, 1) for token `index` of a row: a counter-based hash, the same
// function on host and device.
#if defined(__CUDACC__)
__host__ __device__
#endif
    inline float
    uniform_for(uint64_t seed, int64_t step, int64_t index) {
  uint64_t x = seed ^ (static_cast<uint64_t>(step) * 0x9E3779B97F4A7C15ull) ^
               (static_cast<uint64_t>(index) * 0xD1B54A32D192ED03ull);
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  // kUniformBits random bits and a half: u in [2^-24, 1 - 2^-24], every value exact in float,
  // so log(u) and log(-log(u)) are finite. (With 24 bits, the top value + 0.5 rounded to 2^24:
  // u = 1 once in 2^24 tokens, an infinite race score, a token drawn whatever its probability.)
  return (static_cast<float>(x >> (64 - kUniformBits)) + 0.5f) *
         (1.0f / static_cast<float>(1u << kUniformBits));
}

// Step -1 on one row: -inf for every token whose bit is clear in `allowed` ((vocab + 31) / 32
// words). The reference of apply_token_bitmask (token_bitmask.h).
void apply_token_bitmask_on_cpu(std::span<float> row_logits, std::span<const uint32_t> allowed);

// logits: [rows.size(), vocab], row-major. Returns one token per row.
std::vector<SampledToken> sample_on_cpu(std::span<const float> logits, int64_t vocab,
                                        std::span<const SamplingRow> rows);

// The prompt logprob of `target` under one row of raw logits (no bias, penalties or
// temperature: the model's distribution, with the logprob formula above), its rank and the
// `top` most likely tokens. Both backends' runners report prompt logprobs through it.
PromptLogprob prompt_logprob_on_cpu(std::span<const float> row_logits, int32_t target, int32_t top);

// The logits of one row after steps -1, 0, 1 and 3 (allowed tokens, bias, penalties, then
// / temperature unless greedy).
std::vector<float> adjusted_logits_on_cpu(std::span<const float> row_logits,
                                          const SamplingRow& row);

// The kept-token mask of step 4 for one row (1 = kept) after steps 0-3; for tests of the
// GPU masks. Greedy rows keep only their argmax.
std::vector<uint8_t> sampling_mask_on_cpu(std::span<const float> row_logits,
                                          const SamplingRow& row);

}  // namespace l2kv
