// rope_and_cache for projections without a per-head q/k norm and with 16-bit products (Llama,
// Mistral, Qwen2.5): a thread rotates eight adjacent pairs of one head of one token, moving 16
// bytes a load and store, so many small threads keep enough bytes in flight to stream a
// prompt's q, k and v near the read ceiling. ops::rope_and_cache routes here; the results are
// its own, bit for bit.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

// Whether the vector form serves these buffers: a head_dim that is a multiple of 16 (at most
// 512), and qkv, q_out, the bias and the pools 16-byte aligned.
bool rope_cache_vectors_supports(const PagedKvCache& kv, const void* qkv, const void* bias,
                                 const void* q_out);

// ops::rope_and_cache's arguments without q/k norm and fp8 product (see model_ops.h).
void rope_cache_vectors(const void* qkv, const void* bias, const int32_t* positions,
                        const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                        int32_t q_heads, const PagedKvCache& kv, void* q_out, cudaStream_t stream,
                        bool pdl, bool pair_rows);

}  // namespace l2kv
