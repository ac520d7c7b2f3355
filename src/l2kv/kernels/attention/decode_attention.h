// Decode attention over the paged KV cache: one query token per sequence, MHA or GQA
// (1 to 8 query heads per KV head), bf16 or fp16, head_dim 64 or 128, fp32 accumulation.
//
//   paged_v1_decode  the paper's baseline, in the style of vLLM's paged-attention v1, with
//                    the paper's Algorithm 1 prefetch as a policy.
//   SplitDecode      l2kv's production kernel: split-KV over all SMs, planned on the host.
//   decode_attention_reference (decode_reference.h)  the CPU oracle.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>

#include "l2kv/kernels/attention/prefetch_policy.h"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

inline constexpr int kMaxGqaGroup = 8;  // query heads per KV head the kernels serve

struct DecodeAttentionParams {
  const void* q = nullptr;  // [batch, num_q_heads, head_dim], kv.dtype, device
  void* out = nullptr;      // [batch, num_q_heads, head_dim], kv.dtype, device
  PagedKvCache kv;
  int32_t num_q_heads = 0;
  float softmax_scale = 0.f;  // usually 1/sqrt(head_dim)
  int32_t max_seq_len = 0;    // max over kv.seq_lens, known on the host

  int32_t group_size() const { return num_q_heads / kv.num_kv_heads; }
};

// Validates the cache (validate_paged_kv) and the attention shape: head_dim 64 or 128,
// num_q_heads a multiple of num_kv_heads with at most 8 per KV head, q/out set,
// max_seq_len equal to the largest host length. Throws l2kv::Error.
void validate_decode_attention(const DecodeAttentionParams& params,
                               std::span<const int32_t> host_seq_lens,
                               std::span<const int32_t> host_block_table = {});

// Longest context paged_v1 accepts: its logits live in shared memory, as in vLLM's v1.
int32_t paged_v1_max_seq_len();

// Runs the baseline kernel. `policy` enabled = Algorithm 1: each warp prefetches the K (then V)
// block it will process `distance` iterations later. kAuto prefetches one iteration ahead
// only where that paid on the H100: HND layout (one bulk prefetch per block; NHD's per-token
// prefetches cost more than they save) and fewer than 3 thread blocks resident per SM (the
// kernel is latency-bound; with more, prefetches crowd the L2 and lose 3-10 %).
void paged_v1_decode(const DecodeAttentionParams& params, const PrefetchPolicy& policy,
                     cudaStream_t stream);

}  // namespace l2kv
