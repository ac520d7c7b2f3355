// GpuSampler against the CPU reference (sample_on_cpu, sampling_mask_on_cpu) on Llama-3 and
// Qwen vocabularies: kept-token masks equal exactly, sampled ids equal (a mismatch is
// tolerated only on a race near-tie, and counted), logprobs within 1e-4; seeded draws do not
// depend on the batch; chi-square of temperature sampling as on the CPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/sampling/gpu_sampler.h"
#include "l2kv/sampling/sampler.h"

namespace l2kv::testing {

// Defined in sampler_test.cpp.
double chi_square_p_value(const std::vector<int64_t>& observed,
                          const std::vector<double>& expected);

namespace {

class DeviceFloats {
 public:
  explicit DeviceFloats(const std::vector<float>& host) {
    L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr_),
                               sizeof(float) * std::max<size_t>(host.size(), 1)));
    L2KV_CUDA_CHECK(
        cudaMemcpy(ptr_, host.data(), sizeof(float) * host.size(), cudaMemcpyHostToDevice));
    // A pageable cudaMemcpy may return before its last DMA lands, and the samplers' streams
    // are non-blocking (no implicit order with the legacy stream): wait for it.
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  }
  ~DeviceFloats() { cudaFree(ptr_); }
  DeviceFloats(const DeviceFloats&) = delete;
  DeviceFloats& operator=(const DeviceFloats&) = delete;
  const float* get() const { return ptr_; }

 private:
  float* ptr_ = nullptr;
};

class Stream {
 public:
  Stream() { L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(stream_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// A request's sampling state; rows() points into it, so keep it alive while sampling.
struct Request {
  SamplingParams params;
  uint64_t seed = 0;
  int64_t step = 0;
  std::vector<int32_t> prompt, output;
  std::vector<float> logits;  // [vocab]

  SamplingRow row() const {
    SamplingRow r;
    r.params = &params;
    r.seed = seed;
    r.step = step;
    r.prompt_tokens = prompt;
    r.output_tokens = output;
    return r;
  }
};

// Greedy, temperature, top-k, top-p, min-p, their combinations and penalties, cycling;
// logprobs 5, 0 and none. Histories repeat tokens, and the output ones are mostly among the
// row's best so that penalties move the masks and the draw.
std::vector<Request> mixed_requests(int32_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<Request> requests(n);
  for (int32_t r = 0; r < n; ++r) {
    Request& q = requests[r];
    q.seed = rng();
    q.step = static_cast<int64_t>(rng() % 5000);
    std::normal_distribution<float> normal(0.f, 1.5f + 0.5f * (r % 4));
    q.logits.resize(vocab);
    for (float& v : q.logits) {
      v = normal(rng);
      if (r % 5 == 4) v = std::round(v * 4) / 4;  // exact ties
    }
    SamplingParams& p = q.params;
    switch (r % 10) {
      case 0:
        p.temperature = 0.f;
        break;
      case 1:
        break;
      case 2:
        p.temperature = 0.7f;
        p.top_k = 50;
        break;
      case 3:
        p.top_p = 0.9f;
        break;
      case 4:
        p.temperature = 0.8f;
        p.min_p = 0.05f;
        break;
      case 5:
        p.temperature = 1.2f;
        p.top_k = 200;
        p.top_p = 0.8f;
        p.min_p = 0.02f;
        break;
      case 6:
        p.temperature = 0.f;
        p.repetition_penalty = 1.3f;
        p.presence_penalty = 0.5f;
        p.frequency_penalty = 0.3f;
        break;
      case 7:
        p.temperature = 0.9f;
        p.top_p = 0.95f;
        p.repetition_penalty = 1.2f;
        p.presence_penalty = 1.f;
        p.frequency_penalty = -0.5f;
        break;
      case 8:
        p.top_k = 1;
        break;
      default:
        p.temperature = 0.6f;
        p.top_k = 1000;
        p.top_p = 0.5f;
        p.repetition_penalty = 0.8f;
        p.frequency_penalty = 0.2f;
        break;
    }
    p.logprobs = std::vector<int32_t>{5, 0, -1}[r % 3];

    std::vector<int32_t> best(vocab);
    std::iota(best.begin(), best.end(), 0);
    std::partial_sort(best.begin(), best.begin() + 50, best.end(),
                      [&](int32_t a, int32_t b) { return q.logits[a] > q.logits[b]; });
    std::uniform_int_distribution<int32_t> any(0, static_cast<int32_t>(vocab - 1));
    std::uniform_int_distribution<int32_t> top(0, 49);
    for (int i = 0; i < 200 + 7 * r; ++i)
      q.prompt.push_back(i % 4 == 3 ? q.prompt[i / 2] : any(rng));
    q.prompt.push_back(best[0]);
    for (int i = 0; i < 40; ++i) q.output.push_back(i % 2 == 0 ? best[top(rng)] : any(rng));
    q.output.push_back(best[1]);
    q.output.push_back(best[1]);
    // logit_bias on every third row: a ban of the best token, a boost of a middling one, and
    // biases on tokens of the prompt and the output, so that bias and penalties meet.
    if (r % 3 == 2) {
      p.logit_bias = {{best[0], -100.f},
                      {best[7], 2.5f},
                      {q.output[0], 1.25f},
                      {q.prompt[3], -0.75f},
                      {best[49], 100.f * (r % 2)}};
      std::sort(p.logit_bias.begin(), p.logit_bias.end());
      p.logit_bias.erase(
          std::unique(p.logit_bias.begin(), p.logit_bias.end(),
                      [](const auto& a, const auto& b) { return a.first == b.first; }),
          p.logit_bias.end());
    }
  }
  return requests;
}

std::vector<SamplingRow> rows_of(const std::vector<Request>& requests) {
  std::vector<SamplingRow> rows;
  for (const Request& q : requests) rows.push_back(q.row());
  return rows;
}

std::vector<float> logits_of(const std::vector<Request>& requests) {
  std::vector<float> all;
  for (const Request& q : requests) all.insert(all.end(), q.logits.begin(), q.logits.end());
  return all;
}

int64_t history_of(const std::vector<Request>& requests) {
  int64_t n = 0;
  for (const Request& q : requests) n += q.prompt.size() + q.output.size();
  return n;
}

// True when `token` is kept by the CPU mask and its CPU race score is within 1e-5 (relative)
// of the best one: a draw that float rounding of exp/log may legitimately flip.
bool race_near_tie(const Request& q, int32_t token) {
  const SamplingRow row = q.row();
  if (q.params.greedy()) return false;
  const std::vector<float> x = adjusted_logits_on_cpu(q.logits, row);
  const std::vector<uint8_t> kept = sampling_mask_on_cpu(q.logits, row);
  if (token < 0 || token >= static_cast<int32_t>(x.size()) || !kept[token]) return false;
  auto score = [&](int64_t i) {
    const double u = uniform_for(q.seed, q.step, i);
    return static_cast<double>(x[i]) - std::log(-std::log(u));
  };
  double best = -INFINITY;
  for (size_t i = 0; i < x.size(); ++i)
    if (kept[i]) best = std::max(best, score(static_cast<int64_t>(i)));
  return std::abs(best - score(token)) <= 1e-5 * std::max(std::abs(best), 1.0);
}

struct Agreement {
  int64_t mask_mismatch_rows = 0;
  int64_t id_mismatches = 0;  // not explained by a near-tie
  int64_t near_tie_mismatches = 0;
  double max_logprob_error = 0;
};

Agreement compare_with_cpu(const std::vector<Request>& requests,
                           const std::vector<SampledToken>& gpu,
                           const std::vector<uint8_t>& gpu_masks) {
  const int64_t vocab = static_cast<int64_t>(requests[0].logits.size());
  const std::vector<SamplingRow> rows = rows_of(requests);
  const std::vector<float> logits = logits_of(requests);
  const std::vector<SampledToken> cpu = sample_on_cpu(logits, vocab, rows);
  Agreement a;
  EXPECT_EQ(gpu.size(), requests.size());
  for (size_t r = 0; r < requests.size() && r < gpu.size(); ++r) {
    const Request& q = requests[r];
    const std::vector<uint8_t> mask = sampling_mask_on_cpu(q.logits, rows[r]);
    int64_t differing = 0, first = -1;
    for (int64_t i = 0; i < vocab; ++i)
      if (gpu_masks[r * vocab + i] != mask[i]) {
        if (first < 0) first = i;
        ++differing;
      }
    if (differing != 0) {
      ++a.mask_mismatch_rows;
      ADD_FAILURE() << "row " << r << " (config " << r % 10 << "): " << differing
                    << " mask entries differ, first at token " << first << " (cpu "
                    << int{mask[first]} << ", kept by cpu "
                    << std::count(mask.begin(), mask.end(), 1) << ")";
    }
    if (gpu[r].token != cpu[r].token) {
      if (race_near_tie(q, gpu[r].token)) {
        ++a.near_tie_mismatches;
      } else {
        ++a.id_mismatches;
        ADD_FAILURE() << "row " << r << " (config " << r % 10 << "): gpu token " << gpu[r].token
                      << ", cpu " << cpu[r].token;
      }
    }
    if (q.params.logprobs < 0) {
      EXPECT_TRUE(gpu[r].top_logprobs.empty()) << "row " << r;
      continue;
    }
    // The GPU's own token's logprob, against the CPU's value for that token.
    const double m = *std::max_element(q.logits.begin(), q.logits.end());
    double sum = 0;
    for (float v : q.logits) sum += std::exp(v - m);
    const double expected = q.logits[gpu[r].token] - m - std::log(sum);
    a.max_logprob_error = std::max(a.max_logprob_error, std::abs(gpu[r].logprob - expected));
    if (gpu[r].token == cpu[r].token) {
      EXPECT_NEAR(gpu[r].logprob, cpu[r].logprob, 1e-4) << "row " << r;
    }
    if (gpu[r].top_logprobs.size() != cpu[r].top_logprobs.size()) {
      ADD_FAILURE() << "row " << r << ": " << gpu[r].top_logprobs.size() << " top logprobs, cpu "
                    << cpu[r].top_logprobs.size();
      continue;
    }
    for (size_t k = 0; k < cpu[r].top_logprobs.size(); ++k) {
      EXPECT_EQ(gpu[r].top_logprobs[k].first, cpu[r].top_logprobs[k].first) << "row " << r;
      EXPECT_NEAR(gpu[r].top_logprobs[k].second, cpu[r].top_logprobs[k].second, 1e-4);
      a.max_logprob_error = std::max(a.max_logprob_error,
                                     std::abs(static_cast<double>(gpu[r].top_logprobs[k].second) -
                                              cpu[r].top_logprobs[k].second));
    }
  }
  return a;
}

// One sample() of `requests` with masks recorded, against the CPU reference: the GPU's tokens,
// what decided each row's kept set, and how they agree.
struct RecordedCall {
  std::vector<SampledToken> tokens;
  std::vector<GpuSampler::KeptSetSearch> searches;
  Agreement agreement;
};

RecordedCall sample_recorded(const std::vector<Request>& requests, int32_t scratch_rows) {
  const int64_t vocab = static_cast<int64_t>(requests[0].logits.size());
  const DeviceFloats logits(logits_of(requests));
  Stream stream;
  GpuSampler sampler(vocab, static_cast<int32_t>(requests.size()), history_of(requests),
                     scratch_rows);
  sampler.set_record_masks(true);
  sampler.sample(logits.get(), rows_of(requests), stream.get());
  RecordedCall call;
  call.tokens = sampler.results(stream.get());
  call.searches = sampler.last_kept_set_searches(stream.get());
  call.agreement = compare_with_cpu(requests, call.tokens, sampler.last_masks(stream.get()));
  return call;
}

// `scratch_rows` below the batch's adjusted rows makes the call run in several waves.
void check_mixed_batch(int64_t vocab, int32_t rows_count, uint64_t seed,
                       int32_t scratch_rows = 64) {
  const std::vector<Request> requests = mixed_requests(rows_count, vocab, seed);
  const std::vector<SamplingRow> rows = rows_of(requests);
  const DeviceFloats logits(logits_of(requests));
  Stream stream;
  GpuSampler sampler(vocab, 64, history_of(requests), scratch_rows);
  sampler.set_record_masks(true);
  sampler.sample(logits.get(), rows, stream.get());
  const std::vector<SampledToken> gpu = sampler.results(stream.get());
  const std::vector<uint8_t> masks = sampler.last_masks(stream.get());
  ASSERT_EQ(masks.size(), static_cast<size_t>(rows_count) * vocab);

  const Agreement a = compare_with_cpu(requests, gpu, masks);
  std::printf(
      "vocab %lld, %d rows: mask-mismatch rows %lld, id mismatches %lld, near-tie id "
      "mismatches %lld, max logprob error %.3g\n",
      static_cast<long long>(vocab), rows_count, static_cast<long long>(a.mask_mismatch_rows),
      static_cast<long long>(a.id_mismatches), static_cast<long long>(a.near_tie_mismatches),
      a.max_logprob_error);
  EXPECT_EQ(a.mask_mismatch_rows, 0);
  EXPECT_EQ(a.id_mismatches, 0);
  EXPECT_LE(a.near_tie_mismatches, 1);  // expected 0; one flip in 64 rows is still plausible
  EXPECT_LE(a.max_logprob_error, 1e-4);

  // The device ids are the ones read back.
  std::vector<int32_t> device_ids(rows_count);
  L2KV_CUDA_CHECK(cudaMemcpy(device_ids.data(), sampler.device_tokens(),
                             sizeof(int32_t) * rows_count, cudaMemcpyDeviceToHost));
  for (int32_t r = 0; r < rows_count; ++r) EXPECT_EQ(device_ids[r], gpu[r].token);

  // A second identical call gives identical results: the per-token count scratch was left
  // zero, and nothing depends on timing.
  sampler.sample(logits.get(), rows, stream.get());
  const std::vector<SampledToken> again = sampler.results(stream.get());
  EXPECT_EQ(sampler.last_masks(stream.get()), masks);
  for (int32_t r = 0; r < rows_count; ++r) {
    EXPECT_EQ(again[r].token, gpu[r].token) << "row " << r;
    EXPECT_EQ(again[r].logprob, gpu[r].logprob) << "row " << r;
  }
}

TEST(GpuSamplerGpuTest, MatchesCpuReferenceLlama3Vocab) {
  L2KV_SKIP_WITHOUT_GPU();
  check_mixed_batch(128256, 16, 1);
  check_mixed_batch(128256, 64, 2);
}

// Fewer scratch rows than adjusted rows (penalties or logit_bias: 33 of 64 here): the call
// runs in waves that reuse the pool, with the same results as one launch.
TEST(GpuSamplerGpuTest, ScratchPoolSmallerThanTheBatchRunsInWaves) {
  L2KV_SKIP_WITHOUT_GPU();
  check_mixed_batch(128256, 64, 7, 5);
  const int64_t vocab = 32000;
  const std::vector<Request> requests = mixed_requests(64, vocab, 8);
  const DeviceFloats logits(logits_of(requests));
  Stream stream;
  GpuSampler pooled(vocab, 64, history_of(requests), 5);
  GpuSampler full(vocab, 64, history_of(requests), 64);
  EXPECT_LT(pooled.device_bytes(), full.device_bytes());
  pooled.sample(logits.get(), rows_of(requests), stream.get());
  const std::vector<SampledToken> a = pooled.results(stream.get());
  EXPECT_GT(pooled.last_launches(), 5);
  full.sample(logits.get(), rows_of(requests), stream.get());
  const std::vector<SampledToken> b = full.results(stream.get());
  EXPECT_EQ(full.last_launches(), 1);
  for (size_t r = 0; r < requests.size(); ++r) {
    EXPECT_EQ(a[r].token, b[r].token) << "row " << r;
    EXPECT_EQ(a[r].logprob, b[r].logprob) << "row " << r;
  }
}

// The sampler's device memory no longer grows with max rows x vocab (it took 8 bytes x 4096 x
// 128256 = 4.2 GB at --max-num-seqs 4096): the scratch pool is one row per SM, and the memory
// it takes from the device (what the KV cache sizing then sees as used) is what it reports.
TEST(GpuSamplerGpuTest, DeviceMemoryIsBoundedByThePoolNotTheRows) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr int64_t kVocab = 128256;
  constexpr int32_t kMaxRows = 4096;
  int device = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&device));
  const int32_t pool = GpuSampler::default_scratch_rows(kMaxRows, device);
  int sms = 0;
  L2KV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  EXPECT_EQ(pool, sms);
  EXPECT_EQ(GpuSampler::default_scratch_rows(8, device), 8);
  size_t free_before = 0, free_after = 0, total = 0;
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  L2KV_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  GpuSampler sampler(kVocab, kMaxRows, int64_t{1} << 20, pool);
  L2KV_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  const int64_t taken = static_cast<int64_t>(free_before) - static_cast<int64_t>(free_after);
  std::printf("GpuSampler at %d rows, vocab %lld, %d scratch rows: reports %.1f MB, took %.1f MB\n",
              kMaxRows, static_cast<long long>(kVocab), pool, sampler.device_bytes() / 1e6,
              taken / 1e6);
  EXPECT_LT(sampler.device_bytes(), int64_t{200} << 20);
  EXPECT_GE(taken, sampler.device_bytes() - (int64_t{4} << 20));   // allocated up front
  EXPECT_LE(taken, sampler.device_bytes() + (int64_t{16} << 20));  // allocation granularity
}

// logit_bias of +100 makes greedy pick the token, -100 bans the best one; with and without
// penalties and temperature; the same tokens as the CPU sampler.
TEST(GpuSamplerGpuTest, LogitBiasPlus100PicksAndMinus100Bans) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr int64_t kVocab = 128256;
  constexpr int32_t kRows = 8;
  std::mt19937_64 rng(9);
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<float> logits(static_cast<size_t>(kRows) * kVocab);
  for (float& v : logits) v = normal(rng);
  std::vector<SamplingParams> params(kRows);
  std::vector<int32_t> target(kRows), best(kRows);
  const std::vector<int32_t> history = {11, 12, 12, 4000};
  std::vector<SamplingRow> rows(kRows);
  for (int32_t r = 0; r < kRows; ++r) {
    const float* row = logits.data() + static_cast<size_t>(r) * kVocab;
    best[r] = static_cast<int32_t>(std::max_element(row, row + kVocab) - row);
    target[r] = static_cast<int32_t>((rng() % (kVocab - 1) + 1 + best[r]) % kVocab);
    SamplingParams& p = params[r];
    p.temperature = r % 2 == 0 ? 0.f : 0.5f;
    if (r % 4 >= 2) p.repetition_penalty = 1.3f, p.presence_penalty = 0.5f;
    if (r < 4) {
      p.logit_bias = {{target[r], 100.f}};
    } else {
      p.logit_bias = {{best[r], -100.f}};
    }
    rows[r].params = &params[r];
    rows[r].seed = 77 + r;
    rows[r].output_tokens = history;
  }
  const DeviceFloats d_logits(logits);
  Stream stream;
  GpuSampler sampler(kVocab, kRows, kRows * static_cast<int64_t>(history.size()), 2);
  sampler.sample(d_logits.get(), rows, stream.get());
  const std::vector<SampledToken> gpu = sampler.results(stream.get());
  const std::vector<SampledToken> cpu = sample_on_cpu(logits, kVocab, rows);
  for (int32_t r = 0; r < kRows; ++r) {
    EXPECT_EQ(gpu[r].token, cpu[r].token) << "row " << r;
    if (r < 4)
      EXPECT_EQ(gpu[r].token, target[r]) << "row " << r;
    else
      EXPECT_NE(gpu[r].token, best[r]) << "row " << r;
  }
}

TEST(GpuSamplerGpuTest, MatchesCpuReferenceQwenVocab) {
  L2KV_SKIP_WITHOUT_GPU();
  check_mixed_batch(151936, 64, 3);
}

// Logits as models give them: a few tokens far above a wide body (here 1-60 tokens 6-20 above
// N(0, 2)), so top-k and top-p are decided on the candidate set and the race is entered by the
// few tokens that can win it; k past the set's capacity, top-p near 1 and ties take or leave it
// as they need. Masks, ids and logprobs against the CPU reference, as the mixed batches.
TEST(GpuSamplerGpuTest, PeakedLogitsMatchTheCpuReference) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr int64_t kVocab = 128256;
  constexpr int32_t kRows = 48;
  std::mt19937_64 rng(11);
  std::normal_distribution<float> body(0.f, 2.f);
  std::uniform_real_distribution<float> lift(6.f, 20.f);
  std::uniform_int_distribution<int64_t> any(0, kVocab - 1);
  std::vector<Request> requests(kRows);
  for (int32_t r = 0; r < kRows; ++r) {
    Request& q = requests[r];
    q.seed = rng();
    q.step = r;
    q.logits.resize(kVocab);
    for (float& v : q.logits) v = body(rng);
    const int peaks = 1 + static_cast<int>(rng() % 60);
    for (int i = 0; i < peaks; ++i) q.logits[any(rng)] += lift(rng);
    if (r % 7 == 6)
      for (float& v : q.logits) v = std::round(v * 2) / 2;  // exact ties
    SamplingParams& p = q.params;
    switch (r % 8) {
      case 0:  // Qwen2.5's generation_config
        p.temperature = 0.7f, p.top_p = 0.8f, p.top_k = 20, p.repetition_penalty = 1.05f;
        break;
      case 1:
        p.temperature = 0.7f, p.top_p = 0.9f;
        break;
      case 2:
        p.top_p = 0.999f;
        break;
      case 3:
        p.temperature = 1.3f, p.top_k = 3000;  // past the set's capacity
        break;
      case 4:
        p.temperature = 0.6f, p.top_k = 40, p.min_p = 0.05f;
        break;
      case 5:
        break;  // temperature 1: the race over the whole row
      case 6:
        p.temperature = 0.9f, p.top_p = 0.5f, p.presence_penalty = 0.5f;
        break;
      default:
        p.temperature = 2.5f, p.top_p = 0.95f, p.top_k = 2048;
        break;
    }
    p.logprobs = r % 4 == 0 ? 3 : -1;
    for (int i = 0; i < 30; ++i) q.output.push_back(static_cast<int32_t>(any(rng)));
    q.prompt = {1, 2, 3};
  }
  // uniform_for(12345, 16, 23461) was exactly 1: that token must not win a row it has no part in.
  requests[5].seed = 12345;
  requests[5].step = 16;
  std::fill(requests[5].logits.begin(), requests[5].logits.end(), 0.f);
  requests[5].logits[7] = 40.f;
  const RecordedCall call = sample_recorded(requests, kRows);
  EXPECT_EQ(call.agreement.mask_mismatch_rows, 0);
  EXPECT_EQ(call.agreement.id_mismatches, 0);
  EXPECT_LE(call.agreement.near_tie_mismatches, 1);
  EXPECT_EQ(call.tokens[5].token, 7);
  // Top-k within the set's capacity is decided on it, k = 3000 by the radix search.
  const std::vector<GpuSampler::KeptSetSearch>& searches = call.searches;
  ASSERT_EQ(searches.size(), static_cast<size_t>(kRows));
  for (int32_t r = 0; r < kRows; ++r) {
    GpuSampler::KeptSetSearch expected = GpuSampler::KeptSetSearch::kNone;
    if (r % 8 == 0 || r % 8 == 4) expected = GpuSampler::KeptSetSearch::kCandidates;
    if (r % 8 == 3) expected = GpuSampler::KeptSetSearch::kRadix;
    if (r % 8 == 0 || r % 8 == 3 || r % 8 == 4 || r % 8 == 5) {
      EXPECT_EQ(searches[r], expected) << "row " << r;
    }
  }
}

// The candidate set's edges on a small vocabulary, masks and ids against the CPU reference:
// more tokens tied at the top than the set holds, exactly 2,048 candidates with k = 2,048, ties
// straddling the k-th value past the set, +0 and -0 at the k-th value, a few allowed tokens
// (-inf elsewhere) with k above their count, NaN logits (counted as -inf).
TEST(GpuSamplerGpuTest, CandidateSetEdgesMatchTheCpuReference) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr int64_t kVocab = 4096;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<Request> requests;
  auto add = [&](auto&& fill, auto&& set) {
    Request q;
    q.seed = 100 + requests.size();
    q.step = 3;
    q.logits.assign(kVocab, -100.f);
    fill(q.logits);
    set(q.params);
    requests.push_back(std::move(q));
  };
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  add([](std::vector<float>& x) { std::fill(x.begin(), x.end(), 0.f); },  // 4096 in bin 0
      [](SamplingParams& p) { p.top_k = 5; });
  add(
      [&](std::vector<float>& x) {
        for (int i = 0; i < 2048; ++i) x[2 * i] = 2.f * normal(rng);  // the rest 100 below
      },
      [](SamplingParams& p) { p.top_k = 2048, p.top_p = 0.9f; });
  add(
      [&](std::vector<float>& x) {
        for (int i = 0; i < 2047; ++i) x[i] = 10.f + 0.001f * i;
        for (int i = 2047; i < 2060; ++i) x[i] = 9.5f;  // tied at the 2,048th value
      },
      [](SamplingParams& p) { p.top_k = 2048; });
  add([](std::vector<float>& x) { x[10] = 5.f, x[20] = 4.f, x[30] = 0.f, x[40] = -0.f; },
      [](SamplingParams& p) { p.top_k = 3, p.top_p = 0.999f; });
  add(
      [&](std::vector<float>& x) {
        std::fill(x.begin(), x.end(), -inf);
        for (int i = 0; i < 10; ++i) x[300 * i + 7] = normal(rng);
      },
      [](SamplingParams& p) { p.top_k = 50, p.top_p = 0.9f; });
  add(
      [&](std::vector<float>& x) {
        for (float& v : x) v = 3.f * normal(rng);
        for (int i = 0; i < 40; ++i) x[97 * i] = nan;
        x[5] = 15.f;
      },
      [](SamplingParams& p) { p.top_p = 0.9f, p.top_k = 20; });
  add(
      [&](std::vector<float>& x) {
        for (float& v : x) v = 3.f * normal(rng);
        for (int i = 0; i < 40; ++i) x[97 * i] = nan;
      },
      [](SamplingParams& p) { p.top_p = 0.5f; });
  add(
      [&](std::vector<float>& x) {
        for (int i = 0; i < 40; ++i) x[97 * i] = nan;
        x[3] = 1.f;
      },
      [](SamplingParams& p) { p.temperature = 0.f; });
  const RecordedCall call = sample_recorded(requests, 4);
  EXPECT_EQ(call.agreement.mask_mismatch_rows, 0);
  EXPECT_EQ(call.agreement.id_mismatches, 0);
  EXPECT_EQ(call.agreement.near_tie_mismatches, 0);
  const std::vector<GpuSampler::KeptSetSearch>& searches = call.searches;
  EXPECT_EQ(searches[0], GpuSampler::KeptSetSearch::kRadix);       // 4096 tied at the top
  EXPECT_EQ(searches[1], GpuSampler::KeptSetSearch::kCandidates);  // exactly 2,048
  EXPECT_EQ(searches[2], GpuSampler::KeptSetSearch::kRadix);       // ties past the set
  EXPECT_EQ(searches[3], GpuSampler::KeptSetSearch::kCandidates);
  EXPECT_EQ(call.tokens[7].token, 3);  // greedy past NaN logits
}

// kRaceReach is tight where it must be: a token 19.44 below the largest, drawing uniform_for's
// largest u, beats the largest, which draws the smallest (scores -2.8045 against -2.8115). Rows
// where the largest x is known (min-p; top-k on the candidate set) let only tokens within the
// reach enter the race; a narrower reach would leave the winner out.
TEST(GpuSamplerGpuTest, RaceReachAdmitsTheFarthestPossibleWinner) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr uint64_t kSeed = 1;
  const float lowest = 0.5f / static_cast<float>(1u << kUniformBits);
  const float highest = 1.f - lowest;
  int64_t low_index = -1, high_index = -1;
  for (int64_t i = 0; i < (int64_t{1} << 25) && (low_index < 0 || high_index < 0); ++i) {
    const float u = uniform_for(kSeed, 0, i);
    if (u == lowest && low_index < 0) low_index = i;
    if (u == highest && high_index < 0) high_index = i;
  }
  ASSERT_GE(low_index, 0);
  ASSERT_GE(high_index, 0);
  const int64_t vocab = std::max(low_index, high_index) + 1;
  std::vector<Request> requests(2);
  for (Request& q : requests) {
    q.seed = kSeed;
    q.step = 0;
    q.logits.assign(static_cast<size_t>(vocab), -1000.f);
    q.logits[low_index] = 0.f;
    q.logits[high_index] = -19.44f;
  }
  requests[0].params.min_p = 1e-9f;  // keeps both (log 1e-9 = -20.7)
  requests[1].params.top_k = 2;
  const std::vector<SamplingRow> rows = rows_of(requests);
  const DeviceFloats logits(logits_of(requests));
  Stream stream;
  GpuSampler sampler(vocab, 2, 0, 1);
  sampler.sample(logits.get(), rows, stream.get());
  const std::vector<SampledToken> gpu = sampler.results(stream.get());
  const std::vector<SampledToken> cpu = sample_on_cpu(logits_of(requests), vocab, rows);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(cpu[r].token, high_index) << "reference, row " << r;
    EXPECT_EQ(gpu[r].token, high_index) << "row " << r;
  }
}

// The row maximum planted at an index of every thread of the block (index % 1024 = 0..1023,
// at varying strides): greedy, greedy with penalties and min-p rows must all find it. The
// 64-row mixed batches once missed exactly the maxima of threads 800..895 in step 2; this
// names the thread positions that fail.
TEST(GpuSamplerGpuTest, FindsTheMaximumAtEveryThreadPosition) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr int64_t kVocab = 128256;
  constexpr int32_t kRows = 256, kPositions = 1024;
  SamplingParams greedy, penalized, min_p;
  greedy.temperature = 0.f;
  penalized.temperature = 0.f;
  penalized.repetition_penalty = 1.3f;
  penalized.presence_penalty = 0.5f;
  min_p.min_p = 0.1f;  // keeps only the planted token (10 against N(0, 1))
  const SamplingParams* configs[] = {&greedy, &penalized, &min_p};
  const std::vector<int32_t> history = {3, 5, 5, 7};  // never a planted index below
  Stream stream;
  GpuSampler sampler(kVocab, kRows, kRows * static_cast<int64_t>(history.size()), kRows);
  std::mt19937_64 rng(6);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<int32_t> failed_positions;
  for (int32_t first = 0; first < kPositions; first += kRows) {
    std::vector<float> logits(static_cast<size_t>(kRows) * kVocab);
    for (float& v : logits) v = normal(rng);
    std::vector<SamplingRow> rows(kRows);
    std::vector<int32_t> planted(kRows);
    for (int32_t r = 0; r < kRows; ++r) {
      const int32_t position = first + r;
      const int64_t chunks = (kVocab - 1 - position) / kPositions + 1;
      planted[r] = static_cast<int32_t>(position + kPositions * ((13 + 37 * r) % chunks));
      if (planted[r] < 8) planted[r] += kPositions;
      logits[static_cast<size_t>(r) * kVocab + planted[r]] = 10.f;
      rows[r].params = configs[r % 3];
      rows[r].seed = 1000 + r;
      rows[r].step = first;
      rows[r].prompt_tokens = history;
    }
    const DeviceFloats d_logits(logits);
    sampler.sample(d_logits.get(), rows, stream.get());
    const std::vector<SampledToken> gpu = sampler.results(stream.get());
    const std::vector<SampledToken> cpu = sample_on_cpu(logits, kVocab, rows);
    for (int32_t r = 0; r < kRows; ++r) {
      EXPECT_EQ(cpu[r].token, planted[r]) << "reference, row " << r;
      if (gpu[r].token != planted[r]) failed_positions.push_back(first + r);
    }
  }
  ::testing::Message failed;
  for (int32_t position : failed_positions)
    failed << " " << position << " (warp " << position / 32 << ")";
  EXPECT_TRUE(failed_positions.empty())
      << failed_positions.size() << " thread positions missed:" << failed;
}

TEST(GpuSamplerGpuTest, SameSeedGivesSameTokenInAnotherBatchAndPosition) {
  L2KV_SKIP_WITHOUT_GPU();
  const int64_t vocab = 151936;
  const std::vector<Request> requests = mixed_requests(24, vocab, 4);
  const std::vector<Request> others = mixed_requests(16, vocab, 5);
  // Batch B: the same requests in reverse order, interleaved with unrelated ones.
  std::vector<Request> batch_b;
  std::vector<int32_t> position_of(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    if (i < others.size()) batch_b.push_back(others[i]);
    position_of[requests.size() - 1 - i] = static_cast<int32_t>(batch_b.size());
    batch_b.push_back(requests[requests.size() - 1 - i]);
  }
  Stream stream;
  GpuSampler sampler(vocab, 64, history_of(batch_b) + history_of(requests), 64);
  const DeviceFloats logits_a(logits_of(requests));
  sampler.sample(logits_a.get(), rows_of(requests), stream.get());
  const std::vector<SampledToken> a = sampler.results(stream.get());
  const DeviceFloats logits_b(logits_of(batch_b));
  sampler.sample(logits_b.get(), rows_of(batch_b), stream.get());
  const std::vector<SampledToken> b = sampler.results(stream.get());
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(a[i].token, b[position_of[i]].token) << "request " << i;
    EXPECT_EQ(a[i].logprob, b[position_of[i]].logprob) << "request " << i;
  }
}

// As SamplerCpuTest.TemperatureSamplingFollowsSoftmaxChiSquare (see there for the critical
// value 56.49 of chi-square(15) at 1e-6 and the power against a 1% temperature error), with
// the draws made on the GPU, 8192 rows (steps) per call; and each call's ids equal the CPU's.
TEST(GpuSamplerGpuTest, TemperatureSamplingFollowsSoftmaxChiSquare) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr int64_t kVocab = 16, kDraws = 400000;
  constexpr int32_t kBatch = 8192;
  std::vector<float> logits(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) logits[i] = (i == 5 ? 3.f : 0.f) + 0.04f * ((7 * i) % 16);
  SamplingParams p;
  p.temperature = 0.7f;
  std::vector<double> expected(kVocab), hotter(kVocab);
  double sum = 0, hot_sum = 0;
  for (int64_t i = 0; i < kVocab; ++i) {
    sum += expected[i] = std::exp(static_cast<double>(logits[i] / 0.7f) - 3 / 0.7);
    hot_sum += hotter[i] = std::exp(static_cast<double>(logits[i]) / (0.7 * 1.01) - 3 / 0.707);
  }
  for (int64_t i = 0; i < kVocab; ++i) {
    expected[i] /= sum;
    hotter[i] /= hot_sum;
  }

  std::vector<float> batch_logits;
  for (int32_t r = 0; r < kBatch; ++r)
    batch_logits.insert(batch_logits.end(), logits.begin(), logits.end());
  const DeviceFloats d_logits(batch_logits);
  Stream stream;
  GpuSampler sampler(kVocab, kBatch, 0, 1);
  std::vector<SamplingRow> rows(kBatch);
  for (SamplingRow& row : rows) {
    row.params = &p;
    row.seed = 20240601;
  }
  std::vector<int64_t> observed(kVocab, 0);
  int64_t cpu_mismatches = 0;
  for (int64_t first = 0; first < kDraws; first += kBatch) {
    const int32_t n = static_cast<int32_t>(std::min<int64_t>(kBatch, kDraws - first));
    for (int32_t r = 0; r < n; ++r) rows[r].step = first + r;
    const std::span<const SamplingRow> batch(rows.data(), n);
    sampler.sample(d_logits.get(), batch, stream.get());
    const std::vector<SampledToken> out = sampler.results(stream.get());
    const std::vector<SampledToken> cpu =
        sample_on_cpu(std::span<const float>(batch_logits.data(), static_cast<size_t>(n) * kVocab),
                      kVocab, batch);
    for (int32_t r = 0; r < n; ++r) {
      ++observed[out[r].token];
      cpu_mismatches += out[r].token != cpu[r].token;
    }
  }
  EXPECT_EQ(cpu_mismatches, 0);
  EXPECT_GT(chi_square_p_value(observed, expected), 1e-6);
  EXPECT_LT(chi_square_p_value(observed, hotter), 1e-6);
}

TEST(GpuSamplerGpuTest, RejectsInvalidCallsBeforeLaunching) {
  L2KV_SKIP_WITHOUT_GPU();
  const int64_t vocab = 1000;
  Stream stream;
  GpuSampler sampler(vocab, 2, 4, 2);
  const DeviceFloats logits(std::vector<float>(3 * vocab, 0.f));
  SamplingParams p;
  p.repetition_penalty = 1.1f;
  std::vector<SamplingRow> rows(3);
  for (SamplingRow& row : rows) row.params = &p;
  EXPECT_THROW(sampler.sample(logits.get(), rows, stream.get()), Error);  // 3 rows > 2
  rows.resize(1);
  const std::vector<int32_t> long_history = {1, 2, 3, 4, 5};
  rows[0].prompt_tokens = long_history;
  EXPECT_THROW(sampler.sample(logits.get(), rows, stream.get()), Error);  // 5 tokens > 4
  const std::vector<int32_t> out_of_range = {1000};
  rows[0].prompt_tokens = out_of_range;
  EXPECT_THROW(sampler.sample(logits.get(), rows, stream.get()), Error);
  rows[0].prompt_tokens = {};
  SamplingParams biased;
  biased.logit_bias = {{1000, 1.f}};  // out of the vocabulary
  rows[0].params = &biased;
  EXPECT_THROW(sampler.sample(logits.get(), rows, stream.get()), Error);
  biased.logit_bias = {{3, 1.f}, {3, 2.f}};  // repeated
  EXPECT_THROW(sampler.sample(logits.get(), rows, stream.get()), Error);
  biased.logit_bias.assign(kMaxLogitBias + 1, {0, 1.f});
  EXPECT_THROW(sampler.sample(logits.get(), rows, stream.get()), Error);
  rows[0].params = &p;
  EXPECT_THROW(sampler.last_masks(stream.get()), Error);  // nothing recorded
  EXPECT_THROW(GpuSampler(0, 1, 0, 1), Error);
  EXPECT_THROW(GpuSampler(vocab, 2, 0, 3), Error);  // more scratch rows than rows
  EXPECT_THROW(GpuSampler(vocab, 2, 0, 0), Error);
  // A valid call still works after the rejected ones.
  sampler.sample(logits.get(), rows, stream.get());
  EXPECT_EQ(sampler.results(stream.get())[0].token >= 0, true);
}

// Prompt logprobs on the device against prompt_logprob_on_cpu: random logits of Llama 3's
// vocabulary and of a small one with many tied logits (ranks and the lowest-id-first order of
// ties), targets that are the maximum, tied, in the middle and the least likely, top 0 / 5 /
// 20. Ids and ranks must be equal; logprobs may differ only by the order of the double sums
// (a float ulp).
TEST(GpuSamplerGpuTest, PromptLogprobsMatchTheCpuReference) {
  L2KV_SKIP_WITHOUT_GPU();
  for (const int64_t vocab : {int64_t{128256}, int64_t{1000}}) {
    const bool tied = vocab == 1000;
    constexpr int32_t kRows = GpuSampler::kMaxPromptLogprobRows;
    std::mt19937 rng(static_cast<uint32_t>(vocab));
    std::normal_distribution<float> normal(0.f, 3.f);
    std::vector<float> logits(static_cast<size_t>(kRows * vocab));
    for (float& v : logits) v = tied ? std::round(normal(rng)) : normal(rng);
    std::vector<int32_t> targets(kRows);
    for (int32_t r = 0; r < kRows; ++r) {
      const float* row = logits.data() + r * vocab;
      const auto best = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
      const auto worst = static_cast<int32_t>(std::min_element(row, row + vocab) - row);
      targets[r] = r % 4 == 0   ? best
                   : r % 4 == 1 ? worst
                                : static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    }
    DeviceFloats d_logits(logits);
    Stream stream;
    GpuSampler sampler(vocab, 4, 0, 1);
    for (const int32_t top : {0, 5, kMaxLogprobs}) {
      SCOPED_TRACE(::testing::Message() << "vocab " << vocab << " top " << top);
      const auto got = sampler.prompt_logprobs(d_logits.get(), targets, top, stream.get());
      ASSERT_EQ(got.size(), targets.size());
      for (int32_t r = 0; r < kRows; ++r) {
        const PromptLogprob want = prompt_logprob_on_cpu(
            std::span<const float>(logits.data() + r * vocab, static_cast<size_t>(vocab)),
            targets[r], top);
        EXPECT_EQ(got[r].token, want.token);
        EXPECT_EQ(got[r].rank, want.rank) << "row " << r;
        EXPECT_NEAR(got[r].logprob, want.logprob, 2e-6 * std::max(1.f, std::abs(want.logprob)))
            << "row " << r;
        ASSERT_EQ(got[r].top_logprobs.size(), want.top_logprobs.size());
        for (size_t k = 0; k < want.top_logprobs.size(); ++k) {
          EXPECT_EQ(got[r].top_logprobs[k].first, want.top_logprobs[k].first)
              << "row " << r << " top " << k;
          EXPECT_NEAR(got[r].top_logprobs[k].second, want.top_logprobs[k].second,
                      2e-6 * std::max(1.f, std::abs(want.top_logprobs[k].second)));
        }
      }
    }
    // Refused before any launch: too many rows, a token outside the vocabulary, top past 20.
    EXPECT_THROW(sampler.prompt_logprobs(d_logits.get(), std::vector<int32_t>(kRows + 1, 0), 0,
                                         stream.get()),
                 Error);
    EXPECT_THROW(sampler.prompt_logprobs(d_logits.get(), std::vector<int32_t>{-1}, 0, stream.get()),
                 Error);
    EXPECT_THROW(
        sampler.prompt_logprobs(d_logits.get(), std::vector<int32_t>{static_cast<int32_t>(vocab)},
                                0, stream.get()),
        Error);
    EXPECT_THROW(sampler.prompt_logprobs(d_logits.get(), targets, kMaxLogprobs + 1, stream.get()),
                 Error);
  }
}

}  // namespace
}  // namespace l2kv::testing
