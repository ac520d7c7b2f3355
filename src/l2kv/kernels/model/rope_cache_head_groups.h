// rope_and_cache for projections without a per-head q/k norm and with 16-bit products (Llama,
// Mistral, Qwen2.5): a thread rotates two adjacent pairs of one token across a group of heads,
// so each angle's sine and cosine serve every head of the group and every load and store moves
// two elements. ops::rope_and_cache routes here; the results are its own, bit for bit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

// Whether the grouped form serves these buffers: a head_dim that is a multiple of 4 (at most
// 512), and qkv, q_out and the pools 4-byte aligned (it moves two elements at a time).
bool rope_cache_head_groups_supports(const PagedKvCache& kv, const void* qkv, const void* q_out);

// ops::rope_and_cache's arguments without q/k norm and fp8 product (see model_ops.h).
void rope_cache_head_groups(const void* qkv, const void* bias, const int32_t* positions,
                            const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                            int32_t q_heads, const PagedKvCache& kv, void* q_out,
                            cudaStream_t stream, bool pdl, bool pair_rows);

}  // namespace l2kv
