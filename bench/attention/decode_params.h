// Decode-attention parameters over a benchmark's buffers.
#pragma once

#include <cmath>
#include <cstdint>

#include "l2kv/kernels/attention/decode_attention.h"

namespace l2kv::bench {

// Attention of `q_heads` query heads over `kv` with the usual 1/sqrt(head_dim) scale.
inline DecodeAttentionParams decode_params(const void* q, void* out, int32_t q_heads,
                                           int32_t max_seq_len, const PagedKvCache& kv) {
  DecodeAttentionParams p;
  p.q = q;
  p.out = out;
  p.num_q_heads = q_heads;
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(kv.head_dim));
  p.max_seq_len = max_seq_len;
  p.kv = kv;
  return p;
}

}  // namespace l2kv::bench
