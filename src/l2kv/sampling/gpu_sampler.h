// The sampler of sampler.h on the GPU: one thread block per row over the fp32 logits, same
// penalties, masks, exponential race and logprobs as sample_on_cpu. All buffers are allocated
// once for `max_rows`; a step's parameters and token histories go up in one async copy from
// pinned memory and only the sampled ids and logprobs come back.
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
  GpuSampler(int64_t vocab, int32_t max_rows, int64_t max_history_tokens);
  ~GpuSampler();
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  // Samples one token per row from d_logits [rows.size(), vocab] (device, fp32), enqueued on
  // `stream` without host synchronization. Validates sizes (throws l2kv::Error).
  void sample(const float* d_logits, std::span<const SamplingRow> rows, cudaStream_t stream);

  // The results of the last sample(); synchronizes `stream` first.
  std::vector<SampledToken> results(cudaStream_t stream) const;

  // Device array [max_rows] of the last sampled ids.
  const int32_t* device_tokens() const;

  // Tests: when on, sample() also records each row's kept-token mask; last_masks()
  // returns them, [rows][vocab], 1 = kept (synchronizes `stream`).
  void set_record_masks(bool on);
  std::vector<uint8_t> last_masks(cudaStream_t stream) const;

 private:
  struct Buffers;
  Buffers* b_ = nullptr;
};

}  // namespace l2kv
