// Host helpers the benchmarks share: an owning device array, the median of timings, and
// decode-attention parameters over a benchmark's buffers.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "l2kv/core/cuda_check.h"
#include "l2kv/kernels/attention/decode_attention.h"

namespace l2kv::bench {

// A device allocation of n elements (at least one), freed on destruction.
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n) : n_(n) {
    L2KV_CUDA_CHECK(
        cudaMalloc(reinterpret_cast<void**>(&ptr_), std::max<size_t>(n, 1) * sizeof(T)));
  }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return ptr_; }
  size_t size() const { return n_; }

 private:
  T* ptr_ = nullptr;
  size_t n_;
};

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
