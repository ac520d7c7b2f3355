// The row order of the fused QKV projection on the CUDA backend ("RoPE pairs"): within each head
// of head_dim rows (q, k and v heads alike), rows 16 j .. 16 j + 7 hold the head's features
// 8 j .. 8 j + 7 and rows 16 j + 8 .. 16 j + 15 its features head_dim / 2 + 8 j .. + 7. Neox RoPE
// rotates the pairs (i, i + head_dim / 2) together; in this order a pair lies 8 rows apart in one
// 16-row tile, where one GEMV thread holds both (gemv.h's kRopeCache epilogue). The projection's
// output, and its bias, are then in this order too; ops::rope_and_cache reads either order.
// head_dim must be a multiple of 16.
#pragma once

#include <cstdint>
#include <vector>

#if defined(__CUDACC__)
#define L2KV_ROPE_ROWS_FN __host__ __device__ __forceinline__
#else
#define L2KV_ROPE_ROWS_FN inline
#endif

namespace l2kv {

// The row within its head that holds feature `feature` (0 .. head_dim - 1) of the head.
L2KV_ROPE_ROWS_FN int32_t rope_pair_row(int32_t feature, int32_t head_dim) {
  const int32_t half = head_dim / 2;
  const int32_t second = feature >= half ? 1 : 0;
  const int32_t i = feature - second * half;
  return (i / 8) * 16 + second * 8 + i % 8;
}

// `rows` (heads of head_dim rows of `width` elements each, in feature order) in RoPE-pair
// order. Host only: weights and biases at load.
template <typename T>
std::vector<T> to_rope_pair_rows(const std::vector<T>& rows, int64_t head_dim, int64_t width) {
  std::vector<T> out(rows.size());
  const int64_t heads = static_cast<int64_t>(rows.size()) / (head_dim * width);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t f = 0; f < head_dim; ++f) {
      const int64_t from = (h * head_dim + f) * width;
      const int64_t to =
          (h * head_dim + rope_pair_row(static_cast<int32_t>(f), static_cast<int32_t>(head_dim))) *
          width;
      for (int64_t k = 0; k < width; ++k) out[to + k] = rows[from + k];
    }
  return out;
}

}  // namespace l2kv
