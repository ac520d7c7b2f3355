// The sampler of sampler.h on the GPU: one thread block per row over the fp32 logits, same
// logit_bias, penalties, masks, exponential race and logprobs as sample_on_cpu. All buffers
// are allocated once, in the constructor (prompt_logprobs()'s few KB on its first call); a step's
// parameters, logit_bias entries and token histories go up in one async copy from pinned memory and
// only the sampled ids and logprobs come back. Rows with penalties or logit_bias need a vocab-sized
// scratch row (8 bytes per token): `scratch_rows` of them are kept, and a call with more such rows
// runs in waves.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "l2kv/sampling/sampler.h"

namespace l2kv {

class GpuSampler {
 public:
  // `max_history_tokens`: prompt + output tokens over all rows of one call (penalties).
  // `scratch_rows` in [1, max_rows]: rows with penalties or logit_bias sampled in one launch.
  GpuSampler(int64_t vocab, int32_t max_rows, int64_t max_history_tokens, int32_t scratch_rows);
  ~GpuSampler();
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  // Samples one token per row from d_logits [rows.size(), vocab] (device, fp32), enqueued on
  // `stream` without host synchronization. Validates sizes (throws l2kv::Error). Returns the
  // call's number, for results_of().
  int64_t sample(const float* d_logits, std::span<const SamplingRow> rows, cudaStream_t stream);

  // The results of the last sample(); synchronizes `stream` first.
  std::vector<SampledToken> results(cudaStream_t stream) const;
  // The results of call `call`, one of the last two: waits only for that call's copy, so the
  // step after it may already be running (asynchronous scheduling).
  std::vector<SampledToken> results_of(int64_t call) const;

  // Asynchronous scheduling, the sampler writing the next step's input ids on the device:
  // every ids[i] < 0 (i < count) names the token the last sample() drew in row -ids[i] - 1,
  // and becomes it. Enqueued on `stream`, after that sample() and before the next.
  void write_pending_ids(int32_t* ids, int32_t count, cudaStream_t stream) const;

  // As many scratch rows as `device`'s SMs (one 1024-thread block per SM runs at once, so
  // more would not all be busy), at most max_rows.
  static int32_t default_scratch_rows(int32_t max_rows, int device);

  // Device memory held (scratch pool, staging, results; test-only masks excluded).
  int64_t device_bytes() const;
  // Kernel launches (waves) of the last sample().
  int32_t last_launches() const;

  // Prompt logprobs of up to kMaxPromptLogprobRows rows of raw logits d_logits [rows, vocab]
  // (device, fp32): row r's log-softmax of targets[r], its rank and the `top` (0 to
  // kMaxLogprobs) most likely tokens, as prompt_logprob_on_cpu computes them (the same
  // formula in double precision; only the order of the sums differs). Synchronizes `stream`;
  // throws l2kv::Error for sizes or tokens out of range.
  static constexpr int32_t kMaxPromptLogprobRows = 64;
  std::vector<PromptLogprob> prompt_logprobs(const float* d_logits,
                                             std::span<const int32_t> targets, int32_t top,
                                             cudaStream_t stream);
  // Allocates prompt_logprobs()'s buffers now instead of on its first call (a tensor-parallel
  // rank must not allocate while other ranks may be waiting for it in a collective).
  void reserve_prompt_logprobs();

  // Device array [max_rows] of the last sampled ids.
  const int32_t* device_tokens() const;

  // Tests: when on, sample() also records each row's kept-token mask; last_masks()
  // returns them, [rows][vocab], 1 = kept (synchronizes `stream`).
  void set_record_masks(bool on);
  std::vector<uint8_t> last_masks(cudaStream_t stream) const;
  // With masks recorded, also what decided each row's top-k / top-p in the last sample(): none
  // asked, the candidate set near the largest logit, or the radix search over the whole row.
  enum class KeptSetSearch : uint8_t { kNone, kCandidates, kRadix };
  std::vector<KeptSetSearch> last_kept_set_searches(cudaStream_t stream) const;

 private:
  std::vector<SampledToken> read_results(int slot) const;
  struct Buffers;
  Buffers* b_ = nullptr;
};

}  // namespace l2kv
