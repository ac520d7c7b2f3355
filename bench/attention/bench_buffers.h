// Host helpers the benchmarks share: their buffers (l2kv::DeviceArray), the median of timings
// and decode-attention parameters over those buffers.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_array.h"
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

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace l2kv::bench
