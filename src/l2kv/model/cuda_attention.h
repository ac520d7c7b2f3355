// The attention op of the CUDA backend, planned once per step and run by every layer:
// decode-only steps run the split-KV kernel or the paper's paged_v1 kernel (with its L2
// prefetch policy); steps with prompt chunks run the tensor-core prefill kernel over the chunks
// and, with the split kernel, that kernel over the step's one-token sequences (decode rows; the
// prefill kernel would spend a 128-row tile on each). The runner's step state owns it and plans
// it (CudaStepState::prepare); the model's forward runs it with each layer's KV pools.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/prefill_attention.h"
#include "l2kv/kernels/attention/split_decode.h"

namespace l2kv {

enum class DecodeKernel : uint8_t { kSplit, kPagedV1 };
const char* decode_kernel_name(DecodeKernel kernel);  // "split", "paged_v1"
DecodeKernel parse_decode_kernel(const std::string& name);

class CudaAttention {
 public:
  // Chooses the kernel of decode-only steps and its L2 prefetch policy. Throws l2kv::Error for
  // +pdl on paged_v1.
  void set_decode_kernel(DecodeKernel kernel, const PrefetchPolicy& policy);
  DecodeKernel decode_kernel() const { return kernel_; }
  // The policy in force (`auto` on the split kernel adds programmatic dependent launch).
  const PrefetchPolicy& prefetch() const { return prefetch_; }

  // A model with sliding-window layers plans its prompts for the warp-MMA prefill kernel (the
  // wgmma kernel has no window), so every layer can run the same plan.
  void set_sliding_windows(bool any) {
    prefill_.set_kernel(any ? PrefillKernel::kWarpMma : PrefillKernel::kAuto);
  }
  // Sizes the prefill work list for steps of up to `max_tokens` rows and `max_seqs` sequences.
  void reserve_prefill(int32_t max_tokens, int32_t max_seqs, int32_t num_kv_heads,
                       int32_t num_q_heads);
  // Sizes the decode kernel's buffers for `max_seqs` sequences of up to `max_model_len` tokens
  // of `shape`; the split kernel's graph mode only once a KV pool exists (`kv_pool`).
  void reserve_decode(int32_t max_seqs, int32_t max_model_len, const DecodeAttentionParams& shape,
                      bool kv_pool);

  // Plans a decode-only step of these host-side lengths (the split kernel; paged_v1 needs no
  // plan). Sets params.max_seq_len to the longest.
  void plan_decode(DecodeAttentionParams params, std::span<const int32_t> host_seq_lens,
                   cudaStream_t stream);
  // Plans a step with prompt chunks: every chunk through the prefill kernel.
  void plan_prefill(const PagedKvCache& kv, int32_t num_q_heads,
                    std::span<const PrefillChunk> chunks, cudaStream_t stream);
  // Plans a step with prompt chunks whose one-token chunks (decode rows) go to the split
  // kernel (`params` and `host_seq_lens` cover the whole batch) and the rest to the prefill
  // kernel; with paged_v1 as the decode kernel, or without both kinds of chunk, every chunk
  // goes to the prefill kernel (as plan_prefill).
  void plan_mixed(DecodeAttentionParams params, std::span<const int32_t> host_seq_lens,
                  std::span<const PrefillChunk> chunks, cudaStream_t stream);

  // Runs the planned attention of one layer (`params` carries that layer's pools and scales);
  // allocation-free, so a CUDA graph can capture it. `decode_only` must match the plan.
  void run(const DecodeAttentionParams& params, bool decode_only, cudaStream_t stream);

 private:
  SplitDecode split_;
  PagedV1Decode paged_v1_;
  PrefillAttention prefill_;
  DecodeKernel kernel_ = DecodeKernel::kSplit;
  PrefetchPolicy prefetch_ = PrefetchPolicy::off();
  enum class Planned : uint8_t { kNone, kDecode, kPrefill, kMixed };
  Planned planned_ = Planned::kNone;
  std::vector<int32_t> decode_seqs_, decode_rows_;  // plan_mixed's one-token sequences
  std::vector<PrefillChunk> longer_chunks_;         // and the rest
};

}  // namespace l2kv
