// SamplingParams::validate and the CPU reference sampler: masks against brute-force
// definitions on random logits, penalties on crafted logits, seeded reproducibility, a
// chi-square test of temperature sampling, and logprobs of the raw distribution.
#include "l2kv/sampling/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/sampling/sampling_params.h"

namespace l2kv::testing {

// The chi-square p-value of `observed` counts against probabilities `expected` (shared with
// gpu_sampler_gpu_test.cpp): Q((k - 1) / 2, X^2 / 2), the regularized upper incomplete gamma
// function, by its series below a + 1 and its continued fraction above (Numerical Recipes).
double chi_square_p_value(const std::vector<int64_t>& observed,
                          const std::vector<double>& expected) {
  double n = 0;
  for (int64_t o : observed) n += static_cast<double>(o);
  double x2 = 0;
  for (size_t i = 0; i < observed.size(); ++i) {
    const double e = n * expected[i];
    x2 += (observed[i] - e) * (observed[i] - e) / e;
  }
  const double a = (static_cast<double>(observed.size()) - 1) / 2, x = x2 / 2;
  const double log_prefactor = -x + a * std::log(x) - std::lgamma(a);
  if (x < a + 1) {
    double term = 1 / a, sum = term;
    for (int k = 1; k < 10000 && term > sum * 1e-17; ++k) {
      term *= x / (a + k);
      sum += term;
    }
    return 1 - sum * std::exp(log_prefactor);
  }
  // Lentz's method on the continued fraction of Q.
  constexpr double kTiny = 1e-300;
  double b = x + 1 - a, c = 1 / kTiny, d = 1 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    d = std::abs(d) < kTiny ? 1 / kTiny : 1 / d;
    c = b + an / c;
    c = std::abs(c) < kTiny ? kTiny : c;
    const double delta = d * c;
    h *= delta;
    if (std::abs(delta - 1) < 1e-16) break;
  }
  return std::exp(log_prefactor) * h;
}

namespace {

std::vector<float> random_logits(int64_t n, uint64_t seed, float sigma = 2.f,
                                 float tie_step = 0.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, sigma);
  std::vector<float> out(n);
  for (float& v : out) {
    v = normal(rng);
    if (tie_step > 0) v = std::round(v / tie_step) * tie_step;  // many exact ties
  }
  return out;
}

SamplingRow make_row(const SamplingParams& params, uint64_t seed = 1, int64_t step = 0) {
  SamplingRow row;
  row.params = &params;
  row.seed = seed;
  row.step = step;
  return row;
}

std::vector<float> divided(const std::vector<float>& logits, float temperature) {
  std::vector<float> x(logits);
  for (float& v : x) v = v / temperature;
  return x;
}

// Step 4 written from the definitions, O(V^2): top-k keeps a token when fewer than k tokens
// have a larger logit; top-p (over the top-k tokens) when the tokens with a strictly larger
// logit hold less than top_p of their mass; min-p when p >= min_p * max p.
std::vector<uint8_t> brute_force_mask(const std::vector<float>& x, const SamplingParams& p) {
  const int64_t n = static_cast<int64_t>(x.size());
  const double m = *std::max_element(x.begin(), x.end());
  std::vector<uint8_t> top_k(n, 1);
  if (p.top_k > 0 && p.top_k < n)
    for (int64_t i = 0; i < n; ++i)
      top_k[i] = std::count_if(x.begin(), x.end(), [&](float v) { return v > x[i]; }) < p.top_k;
  double top_k_mass = 0;
  for (int64_t j = 0; j < n; ++j)
    if (top_k[j]) top_k_mass += std::exp(x[j] - m);
  std::vector<uint8_t> kept(n);
  for (int64_t i = 0; i < n; ++i) {
    bool keep = top_k[i];
    if (p.top_p < 1.f) {
      double larger = 0;
      for (int64_t j = 0; j < n; ++j)
        if (top_k[j] && x[j] > x[i]) larger += std::exp(x[j] - m);
      keep = keep && larger < p.top_p * top_k_mass;
    }
    if (p.min_p > 0.f) keep = keep && std::exp(x[i] - m) >= p.min_p;  // p_i / p_max
    kept[i] = keep;
  }
  return kept;
}

int64_t count_kept(const std::vector<uint8_t>& mask) {
  return std::count(mask.begin(), mask.end(), uint8_t{1});
}

TEST(SamplingParamsTest, DefaultsAndBoundaryValuesAreValid) {
  SamplingParams p;
  EXPECT_NO_THROW(p.validate(1000));
  p.temperature = 0.f;
  p.top_p = 1.f;
  p.top_k = 0;
  p.min_p = 1.f;
  p.presence_penalty = -2.f;
  p.frequency_penalty = 2.f;
  p.max_tokens = 1;
  p.min_tokens = 1;
  p.logprobs = kMaxLogprobs;
  p.stop_token_ids = {0, 999};
  p.stop = {"\n\n"};
  p.logit_bias = {{0, -100.f}, {999, 100.f}, {5, 0.f}};
  EXPECT_NO_THROW(p.validate(1000));
  p.logit_bias.clear();
  for (int32_t t = 0; t < kMaxLogitBias; ++t) p.logit_bias.emplace_back(t, 1.f);
  EXPECT_NO_THROW(p.validate(1000));
}

TEST(SamplingParamsTest, RejectsEachInvalidValueNamingTheField) {
  struct Case {
    const char* field;
    std::function<void(SamplingParams&)> set;
  };
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<Case> cases = {
      {"temperature", [](SamplingParams& p) { p.temperature = -0.5f; }},
      {"temperature", [&](SamplingParams& p) { p.temperature = inf; }},
      {"temperature", [&](SamplingParams& p) { p.temperature = nan; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 0.f; }},
      {"top_p", [](SamplingParams& p) { p.top_p = 1.5f; }},
      {"top_p", [&](SamplingParams& p) { p.top_p = nan; }},
      {"top_k", [](SamplingParams& p) { p.top_k = -2; }},
      {"min_p", [](SamplingParams& p) { p.min_p = -0.1f; }},
      {"min_p", [](SamplingParams& p) { p.min_p = 1.1f; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = 0.f; }},
      {"repetition_penalty", [](SamplingParams& p) { p.repetition_penalty = -1.f; }},
      {"repetition_penalty", [&](SamplingParams& p) { p.repetition_penalty = inf; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = 2.5f; }},
      {"presence_penalty", [](SamplingParams& p) { p.presence_penalty = -2.5f; }},
      {"frequency_penalty", [](SamplingParams& p) { p.frequency_penalty = 2.01f; }},
      {"frequency_penalty", [&](SamplingParams& p) { p.frequency_penalty = nan; }},
      {"max_tokens", [](SamplingParams& p) { p.max_tokens = 0; }},
      {"min_tokens", [](SamplingParams& p) { p.min_tokens = -1; }},
      {"min_tokens", [](SamplingParams& p) { p.min_tokens = p.max_tokens + 1; }},
      {"logprobs", [](SamplingParams& p) { p.logprobs = -2; }},
      {"logprobs", [](SamplingParams& p) { p.logprobs = kMaxLogprobs + 1; }},
      {"stop_token_ids",
       [](SamplingParams& p) {
         p.stop_token_ids = {5, -1};
       }},
      {"stop_token_ids", [](SamplingParams& p) { p.stop_token_ids = {1000}; }},
      {"stop",
       [](SamplingParams& p) {
         p.stop = {"end", ""};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{1000, 1.f}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{-1, 1.f}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{3, 100.5f}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{3, -101.f}};
       }},
      {"logit_bias",
       [&](SamplingParams& p) {
         p.logit_bias = {{3, nan}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         p.logit_bias = {{3, 1.f}, {4, 1.f}, {3, 2.f}};
       }},
      {"logit_bias",
       [](SamplingParams& p) {
         for (int32_t t = 0; t <= kMaxLogitBias; ++t) p.logit_bias.emplace_back(t, 1.f);
       }},
  };
  for (const Case& c : cases) {
    SamplingParams p;
    c.set(p);
    try {
      p.validate(1000);
      ADD_FAILURE() << "accepted an invalid " << c.field;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.field), std::string::npos)
          << "message does not name " << c.field << ": " << e.what();
    }
  }
}

// vLLM's rule: a temperature below 1e-5 is greedy, so 1e-38 never divides logits into
// infinities; 1e-5 itself samples.
TEST(SamplingParamsTest, TinyTemperaturesAreGreedy) {
  SamplingParams p;
  for (float t : {0.f, 1e-38f, 1e-20f, 9.9e-6f}) {
    p.temperature = t;
    EXPECT_TRUE(p.greedy()) << t;
    EXPECT_NO_THROW(p.validate(1000));
  }
  p.temperature = 1e-5f;
  EXPECT_FALSE(p.greedy());
  const std::vector<float> logits = random_logits(400, 3, 5.f);
  const int32_t best =
      static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  SamplingParams tiny;
  tiny.temperature = 1e-38f;
  tiny.top_p = 0.9f;
  tiny.min_p = 0.5f;
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    const SamplingRow row = make_row(tiny, seed, static_cast<int64_t>(seed));
    const std::vector<float> x = adjusted_logits_on_cpu(logits, row);
    for (float v : x) ASSERT_TRUE(std::isfinite(v));
    EXPECT_EQ(sample_on_cpu(logits, 400, {&row, 1})[0].token, best);
  }
}

TEST(SamplerCpuTest, GreedyPicksTheLargestLogitLowestIdOnTies) {
  SamplingParams greedy;
  greedy.temperature = 0.f;
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    std::vector<float> logits = random_logits(500, seed);
    const int32_t expected =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    const SamplingRow row = make_row(greedy, seed, static_cast<int64_t>(seed));
    EXPECT_EQ(sample_on_cpu(logits, 500, {&row, 1})[0].token, expected);
    std::vector<uint8_t> mask = sampling_mask_on_cpu(logits, row);
    EXPECT_EQ(count_kept(mask), 1);
    EXPECT_EQ(mask[expected], 1);
  }
  // Ties: the lowest id wins, whatever the seed.
  std::vector<float> tied(64, -1.f);
  tied[40] = tied[17] = tied[63] = 3.f;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    const SamplingRow row = make_row(greedy, seed);
    EXPECT_EQ(sample_on_cpu(tied, 64, {&row, 1})[0].token, 17);
  }
}

// Random parameters of one mask kind over random logits (some with many ties).
void check_masks_against_brute_force(const std::function<void(SamplingParams&, int)>& set) {
  int64_t nontrivial = 0;
  for (int trial = 0; trial < 60; ++trial) {
    SamplingParams p;
    p.temperature = 0.5f + 0.05f * (trial % 20);
    set(p, trial);
    const float tie_step = trial % 3 == 0 ? 0.25f : 0.f;
    const std::vector<float> logits = random_logits(300 + trial, 100 + trial, 2.f, tie_step);
    const SamplingRow row = make_row(p);
    const std::vector<uint8_t> mask = sampling_mask_on_cpu(logits, row);
    const std::vector<uint8_t> expected = brute_force_mask(divided(logits, p.temperature), p);
    ASSERT_EQ(mask, expected) << "trial " << trial << " top_k " << p.top_k << " top_p " << p.top_p
                              << " min_p " << p.min_p;
    const int64_t kept = count_kept(mask);
    EXPECT_GE(kept, 1);
    if (kept > 1 && kept < static_cast<int64_t>(logits.size())) ++nontrivial;
  }
  EXPECT_GE(nontrivial, 30);  // the cases exercise real thresholds
}

TEST(SamplerCpuTest, TopKMaskMatchesBruteForceWithTies) {
  check_masks_against_brute_force([](SamplingParams& p, int trial) {
    p.top_k = std::vector<int>{1, 2, 5, 17, 50, 150, 299, 0, -1}[trial % 9];
  });
}

TEST(SamplerCpuTest, TopPMaskMatchesBruteForce) {
  check_masks_against_brute_force(
      [](SamplingParams& p, int trial) { p.top_p = 0.05f + 0.9f * ((trial * 37) % 60) / 60.f; });
}

TEST(SamplerCpuTest, MinPMaskMatchesBruteForce) {
  check_masks_against_brute_force(
      [](SamplingParams& p, int trial) { p.min_p = 0.01f + 0.5f * ((trial * 13) % 60) / 60.f; });
}

TEST(SamplerCpuTest, CombinedMasksMatchBruteForce) {
  check_masks_against_brute_force([](SamplingParams& p, int trial) {
    p.top_k = std::vector<int>{3, 20, 80, 250, -1}[trial % 5];
    p.top_p = std::vector<float>{0.3f, 0.7f, 0.9f, 0.99f}[trial % 4];
    p.min_p = std::vector<float>{0.f, 0.02f, 0.1f}[trial % 3];
  });
}

// top-p applies to the top-k distribution, renormalized (vLLM's order).
TEST(SamplerCpuTest, TopPIsOverTheTopKTokens) {
  // Softmax of {3, 2, 1, 0, ...}: top-2 renormalized is {0.731, 0.269}; over all tokens the
  // first holds < 0.7 of the mass, over the top 2 it holds > 0.7.
  std::vector<float> logits = {3.f, 2.f, 1.f, 0.f, 0.f, 0.f};
  SamplingParams p;
  p.top_p = 0.7f;
  EXPECT_EQ(count_kept(sampling_mask_on_cpu(logits, make_row(p))), 2);
  p.top_k = 2;
  EXPECT_EQ(sampling_mask_on_cpu(logits, make_row(p)), (std::vector<uint8_t>{1, 0, 0, 0, 0, 0}));
}

TEST(SamplerCpuTest, SampledTokenIsAlwaysKept) {
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_k = 40;
  p.top_p = 0.9f;
  p.min_p = 0.05f;
  const std::vector<float> logits = random_logits(2000, 7);
  for (int64_t step = 0; step < 200; ++step) {
    const SamplingRow row = make_row(p, 99, step);
    const std::vector<uint8_t> mask = sampling_mask_on_cpu(logits, row);
    EXPECT_EQ(mask[sample_on_cpu(logits, 2000, {&row, 1})[0].token], 1);
  }
}

TEST(SamplerCpuTest, PenaltiesChangeExactlyTheSeenLogits) {
  const std::vector<float> logits = {1.f, -1.f, 2.f, 0.5f, -0.5f, 3.f, 0.f, 1.5f};
  const std::vector<int32_t> prompt = {1, 1, 3};
  const std::vector<int32_t> output = {3, 5, 5, 4, 5};
  SamplingParams p;
  p.temperature = 0.f;
  p.repetition_penalty = 2.f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  SamplingRow row = make_row(p);
  row.prompt_tokens = prompt;
  row.output_tokens = output;
  // Repetition over prompt and output tokens (once each, duplicates or not), presence and
  // frequency over output tokens only.
  const std::vector<float> expected = {
      1.f,                           // unseen
      -1.f * 2,                      // prompt only: repetition, negative logit multiplied
      2.f,                           // unseen
      0.5f / 2 - (0.5f + 0.25f),     // prompt and output once
      -0.5f * 2 - (0.5f + 0.25f),    // output once
      3.f / 2 - (0.5f + 0.25f * 3),  // output three times
      0.f,
      1.5f};
  EXPECT_EQ(adjusted_logits_on_cpu(logits, row), expected);
  // Without penalties token 5 wins; with them token 2.
  EXPECT_EQ(sample_on_cpu(logits, 8, {&row, 1})[0].token, 2);
  SamplingParams plain;
  plain.temperature = 0.f;
  EXPECT_EQ(sample_on_cpu(logits, 8, std::vector<SamplingRow>{make_row(plain)})[0].token, 5);

  // Temperature divides the penalized logits; top-k 3 now keeps {0, 2, 7}.
  p.temperature = 0.5f;
  p.top_k = 3;
  const std::vector<float> scaled = adjusted_logits_on_cpu(logits, row);
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(scaled[i], expected[i] / 0.5f);
  EXPECT_EQ(sampling_mask_on_cpu(logits, row), (std::vector<uint8_t>{1, 0, 1, 0, 0, 0, 0, 1}));

  // Repetition penalty alone leaves counts out; a penalty below 1 raises positive logits.
  SamplingParams rep;
  rep.temperature = 0.f;
  rep.repetition_penalty = 0.5f;
  SamplingRow rep_row = make_row(rep);
  rep_row.prompt_tokens = prompt;
  rep_row.output_tokens = output;
  EXPECT_EQ(adjusted_logits_on_cpu(logits, rep_row),
            (std::vector<float>{1.f, -0.5f, 2.f, 1.f, -0.25f, 6.f, 0.f, 1.5f}));
}

// logit_bias is added to the raw logits before penalties and temperature: +100 makes greedy
// (and sampling) pick the token, -100 bans it; the bias meets the penalties in that order.
TEST(SamplerCpuTest, LogitBiasIsAddedBeforePenaltiesAndTemperature) {
  const int64_t vocab = 2000;
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    const std::vector<float> logits = random_logits(vocab, seed, 3.f);
    const int32_t best =
        static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    const int32_t target = static_cast<int32_t>((best + 1 + 97 * seed) % vocab);
    ASSERT_NE(target, best);
    for (float temperature : {0.f, 0.7f, 1.5f}) {
      SamplingParams boost;
      boost.temperature = temperature;
      boost.logit_bias = {{target, 100.f}};
      const SamplingRow row = make_row(boost, seed, 3);
      const SampledToken out = sample_on_cpu(logits, vocab, {&row, 1})[0];
      EXPECT_EQ(out.token, target) << "seed " << seed << " temperature " << temperature;
      SamplingParams ban;
      ban.temperature = temperature;
      ban.logit_bias = {{best, -100.f}};
      const SamplingRow ban_row = make_row(ban, seed, 3);
      EXPECT_NE(sample_on_cpu(logits, vocab, {&ban_row, 1})[0].token, best);
      if (temperature == 0.f) {
        // Greedy with the best banned takes the second best.
        std::vector<float> without(logits);
        without[best] = -std::numeric_limits<float>::infinity();
        EXPECT_EQ(sample_on_cpu(logits, vocab, {&ban_row, 1})[0].token,
                  std::max_element(without.begin(), without.end()) - without.begin());
      }
    }
  }
  // Order: bias, then penalties (repetition divides the biased logit), then temperature;
  // logprobs stay those of the raw logits.
  const std::vector<float> logits = {1.f, -1.f, 2.f, 0.5f};
  SamplingParams p;
  p.temperature = 0.5f;
  p.repetition_penalty = 2.f;
  p.presence_penalty = 0.25f;
  p.logit_bias = {{1, 3.f}, {2, -0.5f}, {3, 0.25f}};
  p.logprobs = 0;
  SamplingRow row = make_row(p);
  const std::vector<int32_t> output = {1, 3};
  row.output_tokens = output;
  const std::vector<float> expected = {1.f / 0.5f, ((-1.f + 3.f) / 2 - 0.25f) / 0.5f,
                                       (2.f - 0.5f) / 0.5f, ((0.5f + 0.25f) / 2 - 0.25f) / 0.5f};
  EXPECT_EQ(adjusted_logits_on_cpu(logits, row), expected);
  const SampledToken out = sample_on_cpu(logits, 4, {&row, 1})[0];
  double sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - 2.0);
  EXPECT_NEAR(out.logprob, logits[out.token] - 2.0 - std::log(sum), 1e-6);
  // An unvalidated out-of-vocabulary id is an error, not a write past the row.
  SamplingParams bad;
  bad.logit_bias = {{4, 1.f}};
  const SamplingRow bad_row = make_row(bad);
  EXPECT_THROW(sample_on_cpu(logits, 4, {&bad_row, 1}), Error);
}

TEST(SamplerCpuTest, SameSeedAndStepGiveTheSameTokenInAnyBatch) {
  const int64_t vocab = 1000;
  SamplingParams a, b, c;
  a.temperature = 1.f;
  b.temperature = 0.7f;
  b.top_p = 0.9f;
  c.temperature = 0.f;
  const std::vector<float> la = random_logits(vocab, 1, 1.f), lb = random_logits(vocab, 2),
                           lc = random_logits(vocab, 3);
  int64_t distinct = 0;
  int32_t previous = -1;
  for (int64_t step = 0; step < 50; ++step) {
    const SamplingRow ra = make_row(a, 1234, step), rb = make_row(b, 5, step),
                      rc = make_row(c, 6, step);
    const int32_t alone = sample_on_cpu(la, vocab, {&ra, 1})[0].token;
    std::vector<float> batch(lb);
    batch.insert(batch.end(), lc.begin(), lc.end());
    batch.insert(batch.end(), la.begin(), la.end());
    const std::vector<SamplingRow> rows = {rb, rc, ra};
    EXPECT_EQ(sample_on_cpu(batch, vocab, rows)[2].token, alone) << "step " << step;
    EXPECT_EQ(sample_on_cpu(la, vocab, {&ra, 1})[0].token, alone);
    distinct += alone != previous;
    previous = alone;
  }
  EXPECT_GT(distinct, 25);  // the step changes the draw
}

// uniform_for stays strictly inside (0, 1). With 24 random bits its largest value + 0.5 rounded
// to 2^24 in float, so u = 1 once in 2^24 draws (seed 12345, step 16, index 23461 is one), the
// race term -log(-log u) was +inf and that token won whatever its probability: 0.76 % of
// temperature-only draws over a 128K vocabulary were a near-uniform pick.
TEST(SamplerCpuTest, UniformDrawsStayInsideZeroOneAndTheRaceFollowsTheLogits) {
  EXPECT_LT(uniform_for(12345, 16, 23461), 1.f);
  for (int64_t step = 0; step < 64; ++step)
    for (int64_t i = 0; i < (int64_t{1} << 16); ++i) {
      const float u = uniform_for(12345, step, i);
      ASSERT_TRUE(u > 0.f && u < 1.f) << "step " << step << ", index " << i << ": " << u;
      ASSERT_TRUE(std::isfinite(std::log(-std::log(static_cast<double>(u)))));
    }
  // kRaceReach covers the race term's range over every draw, and not by much.
  const double lowest = 0.5 / (1u << kUniformBits), highest = 1 - lowest;
  const double span = std::log(-std::log(lowest)) - std::log(-std::log(highest));
  EXPECT_LT(span, kRaceReach);
  EXPECT_GT(span, kRaceReach - 0.1);
  // Token 0 holds all but e^-40 of the probability; index 23461 drew the old u = 1.
  constexpr int64_t kVocab = 32768;
  std::vector<float> logits(kVocab, 0.f);
  logits[0] = 40.f;
  SamplingParams p;
  p.temperature = 1.f;
  const SamplingRow row = make_row(p, 12345, 16);
  EXPECT_EQ(sample_on_cpu(logits, kVocab, {&row, 1})[0].token, 0);
}

// A NaN logit counts as -inf: greedy passes it, masks drop it, top-k does not count it.
TEST(SamplerCpuTest, NanLogitsCountAsMinusInfinity) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> logits = {nan, 1.f, nan, 3.f, 2.f, nan};
  SamplingParams greedy, top2;
  greedy.temperature = 0.f;
  top2.top_k = 2;
  const SamplingRow g = make_row(greedy), t = make_row(top2);
  EXPECT_EQ(sample_on_cpu(logits, 6, {&g, 1})[0].token, 3);
  EXPECT_EQ(sampling_mask_on_cpu(logits, t), (std::vector<uint8_t>{0, 0, 0, 1, 1, 0}));
  for (int64_t step = 0; step < 20; ++step) {
    const SamplingRow r = make_row(top2, 9, step);
    const int32_t token = sample_on_cpu(logits, 6, {&r, 1})[0].token;
    EXPECT_TRUE(token == 3 || token == 4) << token;
  }
}

// Temperature sampling follows softmax(logits / T). 400000 draws (steps 0..399999 of one seed)
// over 16 tokens; X^2 with 15 degrees of freedom. A correct sampler fails when the p-value is
// below 1e-6 (X^2 > 56.49, the 1 - 1e-6 quantile of chi-square(15)), i.e. with probability
// 1e-6. The logits (one token at 3, the rest spread over [0, 1.8], no two neighbours alike)
// are chosen for power: a 1% error in T gives non-centrality ~107 and is caught with
// probability 0.9998; a token off by one (or step/index mixed up so draws repeat) by far more.
TEST(SamplerCpuTest, TemperatureSamplingFollowsSoftmaxChiSquare) {
  constexpr int64_t kVocab = 16, kDraws = 400000, kBatch = 10000;
  std::vector<float> logits(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) logits[i] = (i == 5 ? 3.f : 0.f) + 0.04f * ((7 * i) % 16);
  SamplingParams p;
  p.temperature = 0.7f;
  const std::vector<float> x = divided(logits, p.temperature);
  const double m = *std::max_element(x.begin(), x.end());
  std::vector<double> expected(kVocab);
  double sum = 0;
  for (int64_t i = 0; i < kVocab; ++i) sum += expected[i] = std::exp(x[i] - m);
  for (double& e : expected) e /= sum;

  std::vector<int64_t> observed(kVocab, 0);
  std::vector<float> batch_logits;
  for (int64_t r = 0; r < kBatch; ++r)
    batch_logits.insert(batch_logits.end(), logits.begin(), logits.end());
  std::vector<SamplingRow> rows(kBatch, make_row(p, 20240601));
  for (int64_t first = 0; first < kDraws; first += kBatch) {
    for (int64_t r = 0; r < kBatch; ++r) rows[r].step = first + r;
    for (const SampledToken& t : sample_on_cpu(batch_logits, kVocab, rows)) ++observed[t.token];
  }
  const double p_value = chi_square_p_value(observed, expected);
  EXPECT_GT(p_value, 1e-6);
  // The same counts against a 1%-hotter temperature must be rejected.
  std::vector<double> hotter(kVocab);
  double hot_sum = 0;
  for (int64_t i = 0; i < kVocab; ++i)
    hot_sum += hotter[i] = std::exp(static_cast<double>(logits[i]) / (0.7 * 1.01) - 3 / 0.707);
  for (double& h : hotter) h /= hot_sum;
  EXPECT_LT(chi_square_p_value(observed, hotter), 1e-6);
}

TEST(SamplerCpuTest, ChiSquarePValueMatchesKnownQuantiles) {
  // Constructed counts with a known X^2: two cells of 1000 expected, (o - e)^2 / e summing to
  // the 0.95 quantile of chi-square(1), 3.841459; and the 1 - 1e-6 quantile of chi-square(15).
  const double d = std::sqrt(3.841459 * 1000 / 2);
  EXPECT_NEAR(chi_square_p_value({static_cast<int64_t>(std::round(1000 + d)),
                                  static_cast<int64_t>(std::round(1000 - d))},
                                 {0.5, 0.5}),
              0.05, 0.003);
  std::vector<int64_t> counts(16, 100000);
  // X^2 = 2 * delta^2 / 100000 = 56.4934 with one cell +delta and one -delta.
  const int64_t delta = static_cast<int64_t>(std::round(std::sqrt(56.4934 * 100000 / 2)));
  counts[0] += delta;
  counts[1] -= delta;
  EXPECT_NEAR(std::log10(chi_square_p_value(counts, std::vector<double>(16, 1.0 / 16))), -6.0,
              0.02);
}

TEST(SamplerCpuTest, LogprobsAreLogSoftmaxOfRawLogits) {
  const int64_t vocab = 3000;
  std::vector<float> logits = random_logits(vocab, 11);
  const float top = *std::max_element(logits.begin(), logits.end());
  logits[2500] = logits[700] = logits[1200] = top + 1.f;  // ties among the best: lower id first
  const std::vector<int32_t> history = {700, 5, 5, 9};
  SamplingParams p;
  p.temperature = 0.6f;
  p.top_k = 30;
  p.repetition_penalty = 1.5f;
  p.frequency_penalty = 1.f;
  p.logprobs = 5;
  SamplingParams zero = p;
  zero.logprobs = 0;
  SamplingParams none = p;
  none.logprobs = -1;
  std::vector<SamplingRow> rows = {make_row(p, 3, 4), make_row(zero, 3, 4), make_row(none, 3, 4)};
  for (SamplingRow& r : rows) r.output_tokens = history;
  std::vector<float> batch;
  for (int i = 0; i < 3; ++i) batch.insert(batch.end(), logits.begin(), logits.end());
  const std::vector<SampledToken> out = sample_on_cpu(batch, vocab, rows);

  double m = top + 1.f, sum = 0;
  for (float v : logits) sum += std::exp(v - m);
  auto log_softmax = [&](int32_t i) { return logits[i] - m - std::log(sum); };
  std::vector<int32_t> order(vocab);
  for (int32_t i = 0; i < vocab; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });

  EXPECT_EQ(out[0].token, out[1].token);
  EXPECT_NEAR(out[0].logprob, log_softmax(out[0].token), 1e-5);
  ASSERT_EQ(out[0].top_logprobs.size(), 5u);
  EXPECT_EQ(out[0].top_logprobs[0].first, 700);
  EXPECT_EQ(out[0].top_logprobs[1].first, 1200);
  EXPECT_EQ(out[0].top_logprobs[2].first, 2500);
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(out[0].top_logprobs[k].first, order[k]);
    EXPECT_NEAR(out[0].top_logprobs[k].second, log_softmax(order[k]), 1e-5);
  }
  EXPECT_NEAR(out[1].logprob, log_softmax(out[1].token), 1e-5);
  EXPECT_TRUE(out[1].top_logprobs.empty());
  EXPECT_TRUE(out[2].top_logprobs.empty());
}

// Prompt logprobs (both runners report them through prompt_logprob_on_cpu): the target's
// log-softmax of the raw logits, its rank (1 + the tokens strictly more likely, so tied tokens
// share a rank) and the `top` most likely tokens, lowest id first on ties.
TEST(SamplerCpuTest, PromptLogprobIsLogSoftmaxRankAndTopTokensOfRawLogits) {
  const int64_t vocab = 3000;
  std::vector<float> logits = random_logits(vocab, 12);
  const float top = *std::max_element(logits.begin(), logits.end());
  logits[2500] = logits[700] = logits[1200] = top + 1.f;  // three tied best tokens
  logits[40] = logits[41] = top + 0.5f;                   // then a tied pair
  double m = top + 1.f, sum = 0;
  for (float v : logits) sum += std::exp(static_cast<double>(v) - m);
  auto log_softmax = [&](int32_t i) { return logits[i] - m - std::log(sum); };
  std::vector<int32_t> order(vocab);
  for (int32_t i = 0; i < vocab; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });

  const PromptLogprob best = prompt_logprob_on_cpu(logits, 1200, 6);
  EXPECT_EQ(best.token, 1200);
  EXPECT_EQ(best.rank, 1);  // tied with 700 and 2500: none strictly more likely
  EXPECT_NEAR(best.logprob, log_softmax(1200), 1e-5);
  ASSERT_EQ(best.top_logprobs.size(), 6u);
  const std::vector<int32_t> first = {700, 1200, 2500, 40, 41};
  for (size_t k = 0; k < 6; ++k) {
    if (k < first.size()) {
      EXPECT_EQ(best.top_logprobs[k].first, first[k]) << k;
    }
    EXPECT_EQ(best.top_logprobs[k].first, order[k]) << k;
    EXPECT_NEAR(best.top_logprobs[k].second, log_softmax(order[k]), 1e-5) << k;
  }
  EXPECT_EQ(prompt_logprob_on_cpu(logits, 41, 0).rank, 4);
  for (int32_t target : {order[100], order[vocab - 1], 0}) {
    const PromptLogprob lp = prompt_logprob_on_cpu(logits, target, 0);
    const auto above =
        std::count_if(logits.begin(), logits.end(), [&](float v) { return v > logits[target]; });
    EXPECT_EQ(lp.rank, 1 + above) << target;
    EXPECT_NEAR(lp.logprob, log_softmax(target), 1e-5) << target;
    EXPECT_TRUE(lp.top_logprobs.empty());
  }
  // More top tokens than the vocabulary: all of them.
  EXPECT_EQ(
      prompt_logprob_on_cpu(std::span<const float>(logits).first(4), 2, 20).top_logprobs.size(),
      4u);
  EXPECT_THROW(prompt_logprob_on_cpu(logits, static_cast<int32_t>(vocab), 1), Error);
  EXPECT_THROW(prompt_logprob_on_cpu(logits, -1, 1), Error);
}

TEST(SamplerCpuTest, RejectsMismatchedSizesAndBadHistory) {
  SamplingParams p;
  const std::vector<float> logits(10, 0.f);
  SamplingRow row = make_row(p);
  EXPECT_THROW(sample_on_cpu(logits, 9, {&row, 1}), Error);
  const std::vector<int32_t> bad = {10};
  row.output_tokens = bad;
  EXPECT_THROW(sample_on_cpu(logits, 10, {&row, 1}), Error);
  SamplingRow missing;
  EXPECT_THROW(sample_on_cpu(logits, 10, {&missing, 1}), Error);
}

}  // namespace
}  // namespace l2kv::testing

namespace l2kv::testing {
namespace {

// Step -1: tokens outside the allowed mask are never sampled, greedy or not, and the logprobs
// are those of the allowed tokens alone.
TEST(Sampler, AllowedTokensMask) {
  const int64_t vocab = 40;
  std::vector<float> logits(vocab);
  for (int64_t t = 0; t < vocab; ++t) logits[t] = static_cast<float>((t * 7) % 11) * 0.5f;
  std::vector<uint32_t> allowed(2, 0);
  for (int32_t t : {3, 17, 33}) allowed[t >> 5] |= 1u << (t & 31);
  SamplingParams greedy;
  greedy.temperature = 0.f;
  greedy.logprobs = 2;
  SamplingParams hot;
  hot.temperature = 2.f;
  for (uint64_t seed = 0; seed < 200; ++seed) {
    SamplingRow row{&hot, seed, 0, {}, {}, allowed};
    const int32_t t = sample_on_cpu(logits, vocab, std::vector<SamplingRow>{row})[0].token;
    EXPECT_TRUE(t == 3 || t == 17 || t == 33) << t;
  }
  SamplingRow row{&greedy, 1, 0, {}, {}, allowed};
  const SampledToken s = sample_on_cpu(logits, vocab, std::vector<SamplingRow>{row})[0];
  // The largest allowed logit wins.
  int32_t best = 3;
  for (int32_t t : {17, 33})
    if (logits[t] > logits[best]) best = t;
  EXPECT_EQ(s.token, best);
  double mass = 0;
  for (int32_t t : {3, 17, 33}) mass += std::exp(static_cast<double>(logits[t]));
  EXPECT_NEAR(s.logprob, logits[best] - std::log(mass), 1e-5);
  ASSERT_EQ(s.top_logprobs.size(), 2u);
  EXPECT_EQ(s.top_logprobs[0].first, best);
  // A mask of the wrong size is an error, not a read past its end.
  SamplingRow short_row{&greedy, 1, 0, {}, {}, std::span<const uint32_t>(allowed).first(1)};
  EXPECT_THROW(sample_on_cpu(logits, vocab, std::vector<SamplingRow>{short_row}), Error);
}

}  // namespace
}  // namespace l2kv::testing
