// The register-fragment machinery of l2kv's tensor-core GEMVs (gemv.cu, gemv_split_k.cu).
//
// Fragment trick: the order of k inside an mma is free as long as A and B use the same one.
// Lane (g, t) = (lane / 4, lane % 4) loads 8 consecutive k of W rows g and g + 8 and of x row
// g (one 16-byte vector each); those are exactly the k its A and B fragments of two
// m16n8k16 need: logical k {2t, 2t+1, 2t+8, 2t+9} of the first mma are physical k 8t + 0..3,
// of the second 8t + 4..7. Loads go straight into fragments: no shared-memory staging, no
// shuffles. The 4 lanes of a row read 64 contiguous bytes per load instruction (whole
// sectors); an iteration covers 64 * kUnroll contiguous bytes of each of the 16 rows.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv::gemv_detail {

constexpr int kWarpSize = 32;
constexpr int kRowsPerBlock = 16;  // the mma's M: output features of one warp's tile
constexpr int kColsPerTile = 8;    // the mma's N: rows of x per tile
constexpr int kElemsPerVec = 8;    // 16-bit elements per 16-byte load
constexpr int kLanesPerRow = 4;    // lanes that share a W row in one load instruction

template <int kNTiles>
struct GemvTiling {
  // 16-byte loads per W row per lane per iteration; each lane has 2 * kUnroll weight loads
  // (rows g and g + 8) in flight. The x vectors of an iteration take kNTiles / 2 times the
  // weights' registers, so more tiles unroll less.
  static constexpr int kUnroll = kNTiles == 1 ? 8 : kNTiles == 2 ? 4 : 2;
  static constexpr int kVecsPerIter = kLanesPerRow * kUnroll;  // of one row, per warp iteration
  static constexpr int kAccs = 4 * kNTiles;                    // fp32 accumulators per lane
};

// The W vectors of one warp iteration: kUnroll of each of the lane's two rows (g and g + 8).
template <int kNTiles>
struct WeightVecs {
  static constexpr int kUnroll = GemvTiling<kNTiles>::kUnroll;
  uint4 lo[kUnroll], hi[kUnroll];
};

// Loads the iteration that starts at `first_vec` (the lane's own offset t is already in the
// pointers). kTail: vectors at or past `lane_vecs` (the row length in vectors minus t) read
// nothing and count as zeros; `in` is a multiple of 8, so a vector is wholly inside the row or
// wholly outside.
template <int kNTiles, bool kTail>
__device__ __forceinline__ void load_weights(WeightVecs<kNTiles>& wv, const uint4* w_lo,
                                             const uint4* w_hi, int64_t first_vec,
                                             int64_t lane_vecs) {
#pragma unroll
  for (int u = 0; u < WeightVecs<kNTiles>::kUnroll; ++u) {
    const int64_t v = first_vec + u * kLanesPerRow;
    if (!kTail || v < lane_vecs) {
      wv.lo[u] = ptx::ld_stream_16(w_lo + v);
      wv.hi[u] = ptx::ld_stream_16(w_hi + v);
    } else {
      wv.lo[u] = wv.hi[u] = make_uint4(0, 0, 0, 0);
    }
  }
}

// Where a lane's x vectors come from: the 16-bit x rows (kNorm false), or, for the RMSNorm
// prologue, the fp32 residual rows scaled by each row's 1 / rms and the norm's weight, rounded
// as ops::add_rmsnorm rounds. Pointers are at the lane's offset t; `v` counts vectors from it.
template <typename T, int kNTiles, bool kNorm>
struct XSource {
  const uint4* x[kNTiles];
  const float* residual[kNTiles];
  float scale[kNTiles];
  const uint4* gamma;

  __device__ __forceinline__ uint4 load(int nt, int64_t v) const {
    if constexpr (!kNorm) {
      return __ldg(x[nt] + v);
    } else {
      using Traits = tc::ElementTraits<T>;
      const float4* r = reinterpret_cast<const float4*>(residual[nt] + v * kElemsPerVec);
      const float4 r0 = __ldg(r), r1 = __ldg(r + 1);
      const uint4 graw = __ldg(gamma + v);
      const T* gm = reinterpret_cast<const T*>(&graw);
      const float rv[kElemsPerVec] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
      uint4 out;
      T* o = reinterpret_cast<T*>(&out);
#pragma unroll
      for (int e = 0; e < kElemsPerVec; ++e)
        o[e] = Traits::from_float(Traits::to_float(gm[e]) * (rv[e] * scale[nt]));
      return out;
    }
  }
};

// The matching x vectors of the iteration, then 2 * kUnroll * kNTiles mma.
template <typename T, int kNTiles, bool kTail, bool kNorm>
__device__ __forceinline__ void multiply(float (&acc)[kNTiles][4], const WeightVecs<kNTiles>& wv,
                                         const XSource<T, kNTiles, kNorm>& xs, int64_t first_vec,
                                         int64_t lane_vecs) {
  constexpr int kUnroll = GemvTiling<kNTiles>::kUnroll;
  uint4 b[kUnroll][kNTiles];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = first_vec + u * kLanesPerRow;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
      b[u][nt] = (!kTail || v < lane_vecs) ? xs.load(nt, v) : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const uint32_t a0[4] = {wv.lo[u].x, wv.hi[u].x, wv.lo[u].y, wv.hi[u].y};
    const uint32_t a1[4] = {wv.lo[u].z, wv.hi[u].z, wv.lo[u].w, wv.hi[u].w};
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
      const uint32_t b0[2] = {b[u][nt].x, b[u][nt].y};
      const uint32_t b1[2] = {b[u][nt].z, b[u][nt].w};
      tc::mma_m16n8k16<T>(acc[nt], a0, b0);
      tc::mma_m16n8k16<T>(acc[nt], a1, b1);
    }
  }
}

template <typename OutT>
__device__ __forceinline__ OutT to_output(float v) {
  if constexpr (std::is_same_v<OutT, float>)
    return v;
  else
    return tc::ElementTraits<OutT>::from_float(v);
}

}  // namespace l2kv::gemv_detail
