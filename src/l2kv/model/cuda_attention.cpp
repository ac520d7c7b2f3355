#include "l2kv/model/cuda_attention.h"

#include <algorithm>

#include "l2kv/core/error.h"

namespace l2kv {

const char* decode_kernel_name(DecodeKernel kernel) {
  return kernel == DecodeKernel::kSplit ? "split" : "paged_v1";
}

DecodeKernel parse_decode_kernel(const std::string& name) {
  if (name == "split") return DecodeKernel::kSplit;
  if (name == "paged_v1") return DecodeKernel::kPagedV1;
  throw Error("attention kernel '" + name + "': expected split or paged_v1");
}

void CudaAttention::set_decode_kernel(DecodeKernel kernel, const PrefetchPolicy& policy) {
  if (policy.pdl && kernel != DecodeKernel::kSplit)
    throw Error("KV prefetch policy " + to_string(policy) +
                ": +pdl (programmatic dependent launch) needs the split attention kernel");
  kernel_ = kernel;
  prefetch_ = policy;
  // `auto` on the split kernel: no L2 prefetch distance (SplitDecode::prefetch_distance) and a
  // programmatic dependent launch behind the RoPE/KV-write kernel: on an H200 the decode step
  // was 0.4-1.3 % faster at batch 1 and 8 and within 0.2 % at 16 and 64
  // (bench/results/2026-11-27-h200/decode-v2/steady_rope_pdl.json, steady_auto.json).
  if (kernel == DecodeKernel::kSplit && policy.mode == PrefetchMode::kAuto) prefetch_.pdl = true;
}

void CudaAttention::reserve_prefill(int32_t max_tokens, int32_t max_seqs, int32_t num_kv_heads,
                                    int32_t num_q_heads) {
  prefill_.reserve(max_tokens, max_seqs, num_kv_heads, num_q_heads);
}

void CudaAttention::reserve_decode(int32_t max_seqs, int32_t max_model_len,
                                   const DecodeAttentionParams& shape, bool kv_pool) {
  if (kernel_ == DecodeKernel::kPagedV1)
    // Decode steps pass max_model_len as the length bound (one launch, and graph, for every
    // length): beyond 48K tokens paged_v1 runs in partitions, whose partials are sized here for
    // the largest batch.
    paged_v1_.reserve(max_seqs, shape.num_q_heads, shape.kv.head_dim, max_model_len);
  else if (kv_pool)
    split_.reserve_for_graphs(max_seqs, shape);
}

void CudaAttention::plan_decode(DecodeAttentionParams params,
                                std::span<const int32_t> host_seq_lens, cudaStream_t stream) {
  planned_ = Planned::kNone;
  if (kernel_ == DecodeKernel::kSplit) {
    params.max_seq_len = *std::max_element(host_seq_lens.begin(), host_seq_lens.end());
    split_.plan(params, host_seq_lens, stream);  // the same plan serves every layer
  }
  planned_ = Planned::kDecode;
}

void CudaAttention::plan_prefill(const PagedKvCache& kv, int32_t num_q_heads,
                                 std::span<const PrefillChunk> chunks, cudaStream_t stream) {
  planned_ = Planned::kNone;
  prefill_.plan(kv, num_q_heads, chunks, stream);
  planned_ = Planned::kPrefill;
}

void CudaAttention::plan_mixed(DecodeAttentionParams params, std::span<const int32_t> host_seq_lens,
                               std::span<const PrefillChunk> chunks, cudaStream_t stream) {
  decode_seqs_.clear();
  decode_rows_.clear();
  longer_chunks_.clear();
  for (const PrefillChunk& c : chunks) {
    if (c.num_tokens == 1) {
      decode_seqs_.push_back(c.seq);
      decode_rows_.push_back(c.q_row_begin);
    } else {
      longer_chunks_.push_back(c);
    }
  }
  if (kernel_ != DecodeKernel::kSplit || decode_seqs_.empty() || longer_chunks_.empty()) {
    plan_prefill(params.kv, params.num_q_heads, chunks, stream);
    return;
  }
  planned_ = Planned::kNone;
  params.max_seq_len = *std::max_element(host_seq_lens.begin(), host_seq_lens.end());
  split_.plan_rows(params, host_seq_lens, decode_seqs_, decode_rows_, stream);
  prefill_.plan(params.kv, params.num_q_heads, longer_chunks_, stream);
  planned_ = Planned::kMixed;
}

void CudaAttention::run(const DecodeAttentionParams& params, bool decode_only,
                        cudaStream_t stream) {
  if (planned_ == Planned::kNone || decode_only != (planned_ == Planned::kDecode))
    throw Error("attention: run() does not match the step planned");
  if (planned_ == Planned::kMixed) {
    // Disjoint rows of out: the decode rows, then the chunks'.
    split_.run(params, prefetch_, stream);
    prefill_.run(params.q, params.out, params.kv, params.num_q_heads, params.softmax_scale, stream,
                 params.sliding_window);
  } else if (planned_ == Planned::kPrefill) {
    prefill_.run(params.q, params.out, params.kv, params.num_q_heads, params.softmax_scale, stream,
                 params.sliding_window);
  } else if (kernel_ == DecodeKernel::kSplit) {
    split_.run(params, prefetch_, stream);
  } else {
    paged_v1_.run(params, prefetch_, stream);
  }
}

}  // namespace l2kv
