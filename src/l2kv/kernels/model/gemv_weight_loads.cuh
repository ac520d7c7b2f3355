// The weight loads the decode GEMVs share (gemv.cu's 16-bit and fused forms, gemv_fp8.cu): lane
// (g, t) of a warp streams W rows g and g + 8 of its 16-row tile, 16 bytes at a time, the 4 lanes
// of a row reading 64 contiguous bytes per load instruction.
#pragma once

#include <cstdint>

#include "l2kv/kernels/cache_hints.cuh"

namespace l2kv::gemv_loads {

inline constexpr int kLanesPerRow = 4;  // lanes that share a W row in one load instruction

// The W vectors of one warp iteration: kUnroll of each of the lane's two rows (g and g + 8).
template <int kUnroll>
struct WeightVecs {
  uint4 lo[kUnroll], hi[kUnroll];
};

// Loads the iteration that starts at `first_vec` (the lane's own offset t is already in the
// pointers). kTail: vectors at or past `lane_vecs` (the row length in vectors minus t) read
// nothing and count as zeros; `in` is a multiple of 8 (16 for E4M3), so a vector is wholly
// inside the row or wholly outside.
template <int kUnroll, bool kTail>
__device__ __forceinline__ void load_weights(WeightVecs<kUnroll>& wv, const uint4* w_lo,
                                             const uint4* w_hi, int64_t first_vec,
                                             int64_t lane_vecs) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = first_vec + u * kLanesPerRow;
    if (!kTail || v < lane_vecs) {
      wv.lo[u] = ptx::ld_stream_16(w_lo + v);
      wv.hi[u] = ptx::ld_stream_16(w_hi + v);
    } else {
      wv.lo[u] = wv.hi[u] = make_uint4(0, 0, 0, 0);
    }
  }
}

}  // namespace l2kv::gemv_loads
