// Decode GEMV on tensor cores. A thread block owns 16 output features (16 rows of W) and the
// whole `in` dimension; its warps split `in` between them (warp w takes iterations w, w +
// kWarps, ...), each accumulating a 16 x (8 * kNTiles) tile of y^T with mma.m16n8k16, and the
// warps' tiles are summed through shared memory at the end. Every weight byte is read once,
// by one 16-byte streaming load; x (at most 64 rows) is re-read by every block through L1/L2.
// The fragment layout is gemv_fragments.cuh's.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <string>
#include <type_traits>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/gemv.h"
#include "l2kv/kernels/model/gemv_fragments.cuh"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {
namespace {

using namespace gemv_detail;

constexpr int kWarps = 8;  // split-K ways inside a block
constexpr int kThreads = kWarps * kWarpSize;
// Two blocks of 256 threads per SM caps registers at 128 per thread: room for 2 x 8 weight
// vectors in flight (NTiles = 1). More blocks fit where registers allow.
constexpr int kMinBlocksPerSm = 2;

struct GemvParams {
  const void* x;
  const void* w;
  void* y;
  int64_t rows, in, out;
  bool pdl;  // launched with programmatic dependent launch
  GemvFusion fusion;
};

template <typename T, typename OutT, int kNTiles, bool kNorm, GemvEpilogue kEpilogue>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) gemv_kernel(GemvParams p) {
  // A kernel launched behind this one with programmatic dependent launch may start now; it
  // waits for this grid before reading its output.
  ptx::launch_dependents();
  using Tiling = GemvTiling<kNTiles>;
  __shared__ float partial[kWarps][Tiling::kAccs][kWarpSize];
  __shared__ float row_sumsq[kGemvMaxFusedRows];

  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int g = lane / kLanesPerRow, t = lane % kLanesPerRow;
  const int64_t first_row = int64_t{blockIdx.x} * kRowsPerBlock;
  const int64_t vecs = p.in / kElemsPerVec;
  const GemvFusion& f = p.fusion;
  // Rows past the end of W or x read the last row (valid memory); the mma keeps rows and
  // columns apart, and those results are never stored.
  const int64_t w_row_lo = min(first_row + g, p.out - 1);
  const int64_t w_row_hi = min(first_row + g + kRowsPerBlock / 2, p.out - 1);
  const uint4* w = static_cast<const uint4*>(p.w);
  const uint4* w_lo = w + w_row_lo * vecs + t;
  const uint4* w_hi = w + w_row_hi * vecs + t;
  XSource<T, kNTiles, kNorm> xs;
  int64_t x_rows[kNTiles];
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
    x_rows[nt] = min(int64_t{nt * kColsPerTile + g}, p.rows - 1);
    if constexpr (kNorm)
      xs.residual[nt] = f.norm_residual + x_rows[nt] * p.in + t * kElemsPerVec;
    else
      xs.x[nt] = static_cast<const uint4*>(p.x) + x_rows[nt] * vecs + t;
  }
  if constexpr (kNorm) xs.gamma = static_cast<const uint4*>(f.norm_weight) + t;
  if constexpr (kEpilogue == GemvEpilogue::kResidualAdd)
    if (threadIdx.x < kGemvMaxFusedRows) row_sumsq[threadIdx.x] = 0.f;

  const int64_t full_iters = vecs / Tiling::kVecsPerIter;
  const bool has_tail = vecs % Tiling::kVecsPerIter != 0;
  // The weights do not depend on the kernel ahead: the warp's first iteration of them is in
  // flight before the wait below, so with PDL the blocks resident early (up to 64 KB each)
  // stream weights while that kernel drains.
  WeightVecs<kNTiles> wv;
  int64_t it = warp;
  if (it < full_iters)
    load_weights<kNTiles, false>(wv, w_lo, w_hi, it * Tiling::kVecsPerIter, vecs - t);
  else if (it == full_iters && has_tail)
    load_weights<kNTiles, true>(wv, w_lo, w_hi, it * Tiling::kVecsPerIter, vecs - t);
  // With PDL the kernel ahead (which writes x, or the residual and its sums of squares) may
  // still run: wait for it before reading them.
  if (p.pdl) ptx::grid_dependency_wait();
  if constexpr (kNorm) {
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
      xs.scale[nt] = __frsqrt_rn(f.norm_sumsq[x_rows[nt]] / static_cast<float>(p.in) + f.eps);
    if (f.clear_sumsq != nullptr && blockIdx.x == 0 && threadIdx.x < kGemvMaxFusedRows)
      f.clear_sumsq[threadIdx.x] = 0.f;
  }

  float acc[kNTiles][4] = {};
  for (; it < full_iters; it += kWarps) {
    if (it != warp)
      load_weights<kNTiles, false>(wv, w_lo, w_hi, it * Tiling::kVecsPerIter, vecs - t);
    multiply<T, kNTiles, false>(acc, wv, xs, it * Tiling::kVecsPerIter, vecs - t);
  }
  // The partial last iteration belongs to the warp whose turn it is.
  if (it == full_iters && has_tail) {
    if (it != warp)
      load_weights<kNTiles, true>(wv, w_lo, w_hi, it * Tiling::kVecsPerIter, vecs - t);
    multiply<T, kNTiles, true>(acc, wv, xs, it * Tiling::kVecsPerIter, vecs - t);
  }

  // Sum the warps' tiles. Accumulator r of tile nt is the m16n8 C fragment's element
  // (g + 8 * (r / 2), 2t + r % 2): output feature first_row + g + 8 * (r / 2), x row
  // 8 nt + 2t + r % 2. One thread finishes the pair of features (g, g + 8) of one x row:
  // the pair a kSiluMul epilogue combines.
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[warp][nt * 4 + r][lane] = acc[nt][r];
  __syncthreads();
  using Traits = tc::ElementTraits<T>;
  for (int j = static_cast<int>(threadIdx.x); j < kNTiles * 2 * kWarpSize; j += kThreads) {
    const int nt = j / (2 * kWarpSize), c = (j / kWarpSize) % 2, l = j % kWarpSize;
    float lo = 0.f, hi = 0.f;
#pragma unroll
    for (int wp = 0; wp < kWarps; ++wp) {
      lo += partial[wp][nt * 4 + c][l];
      hi += partial[wp][nt * 4 + c + 2][l];
    }
    const int64_t n = first_row + l / kLanesPerRow;  // and n + 8
    const int64_t m = nt * kColsPerTile + 2 * (l % kLanesPerRow) + c;
    if (m >= p.rows) continue;
    if constexpr (kEpilogue == GemvEpilogue::kStore) {
      OutT* y = static_cast<OutT*>(p.y);
      if (n < p.out) y[m * p.out + n] = to_output<OutT>(lo);
      if (n + kRowsPerBlock / 2 < p.out) y[m * p.out + n + kRowsPerBlock / 2] = to_output<OutT>(hi);
    } else if constexpr (kEpilogue == GemvEpilogue::kSiluMul) {
      // out is a multiple of 16: every block holds 8 whole (gate, up) pairs.
      const float gate = Traits::to_float(Traits::from_float(lo));
      const float up = Traits::to_float(Traits::from_float(hi));
      const int64_t feature = int64_t{blockIdx.x} * (kRowsPerBlock / 2) + l / kLanesPerRow;
      static_cast<T*>(p.y)[m * (p.out / 2) + feature] =
          Traits::from_float(gate / (1.f + __expf(-gate)) * up);
    } else {
      float sumsq = 0.f;
      for (int half = 0; half < 2; ++half) {
        const int64_t col = n + half * (kRowsPerBlock / 2);
        if (col >= p.out) continue;
        float& r = f.residual[m * p.out + col];
        r += Traits::to_float(Traits::from_float(half == 0 ? lo : hi));
        sumsq += r * r;
      }
      atomicAdd(&row_sumsq[m], sumsq);
    }
  }
  if constexpr (kEpilogue == GemvEpilogue::kResidualAdd) {
    __syncthreads();
    if (f.residual_sumsq != nullptr && threadIdx.x < p.rows)
      atomicAdd(&f.residual_sumsq[threadIdx.x], row_sumsq[threadIdx.x]);
  }
}

template <typename T, typename OutT, bool kNorm, GemvEpilogue kEpilogue>
void launch(const GemvParams& p, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((p.out + kRowsPerBlock - 1) / kRowsPerBlock);
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config =
      launch_config(dim3(blocks), dim3(kThreads), 0, stream, p.pdl, attribute);
  if (p.rows <= kColsPerTile) {
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, gemv_kernel<T, OutT, 1, kNorm, kEpilogue>, p));
  } else if (p.rows <= 2 * kColsPerTile) {
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, gemv_kernel<T, OutT, 2, kNorm, kEpilogue>, p));
  } else if constexpr (!kNorm && kEpilogue == GemvEpilogue::kStore) {
    // Only plain products take more than two tiles (gemv_supports).
    if (p.rows <= 4 * kColsPerTile)
      L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, gemv_kernel<T, OutT, 4, false, kEpilogue>, p));
    else
      L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, gemv_kernel<T, OutT, 8, false, kEpilogue>, p));
  }
}

// The combinations the decoder uses: plain (16-bit or fp32 out), norm + store (QKV), residual
// add (O, down), norm + SiLU (gate_up).
template <typename T>
void launch_typed(const GemvParams& p, bool f32_out, cudaStream_t stream) {
  const bool norm = p.fusion.norm_residual != nullptr;
  switch (p.fusion.epilogue) {
    case GemvEpilogue::kStore:
      if (f32_out)
        launch<T, float, false, GemvEpilogue::kStore>(p, stream);
      else if (norm)
        launch<T, T, true, GemvEpilogue::kStore>(p, stream);
      else
        launch<T, T, false, GemvEpilogue::kStore>(p, stream);
      break;
    case GemvEpilogue::kResidualAdd:
      launch<T, T, false, GemvEpilogue::kResidualAdd>(p, stream);
      break;
    case GemvEpilogue::kSiluMul:
      launch<T, T, true, GemvEpilogue::kSiluMul>(p, stream);
      break;
  }
}

bool aligned_16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

bool gemv_supports(int64_t rows, int64_t in, int64_t out, const void* x, const void* w,
                   const GemvFusion& fusion) {
  const bool norm = fusion.norm_residual != nullptr;
  const bool fused = norm || fusion.epilogue != GemvEpilogue::kStore;
  if (!(rows >= 1 && rows <= (fused ? kGemvMaxFusedRows : kGemvMaxRows) && in >= kElemsPerVec &&
        in % kElemsPerVec == 0 && out >= 1 &&
        (out + kRowsPerBlock - 1) / kRowsPerBlock <= INT_MAX && aligned_16(w)))
    return false;
  if (norm) {
    if (!aligned_16(fusion.norm_residual) || !aligned_16(fusion.norm_weight) ||
        fusion.norm_sumsq == nullptr)
      return false;
  } else if (!aligned_16(x)) {
    return false;
  }
  switch (fusion.epilogue) {
    case GemvEpilogue::kStore:
      return true;
    case GemvEpilogue::kResidualAdd:
      return !norm && fusion.residual != nullptr;  // no decoder projection needs both
    case GemvEpilogue::kSiluMul:
      return norm && out % kRowsPerBlock == 0;  // gate_up always follows a norm
  }
  return false;
}

void gemv(DType dtype, const void* x, const void* w, void* y, bool f32_out, int64_t rows,
          int64_t in, int64_t out, cudaStream_t stream, bool pdl, const GemvFusion& fusion) {
  const bool fused = fusion.norm_residual != nullptr || fusion.epilogue != GemvEpilogue::kStore;
  if (!gemv_supports(rows, in, out, x, w, fusion) || (fused && f32_out))
    throw Error("gemv: unsupported problem rows=" + std::to_string(rows) +
                " in=" + std::to_string(in) + " out=" + std::to_string(out) +
                " (needs 1 <= rows <= 64, in a positive multiple of 8, 16-byte aligned x and w;"
                " fused forms: at most 16 rows, 16-bit output, their pointers set, out a"
                " multiple of 16 for SiLU x up)");
  const GemvParams p{x, w, y, rows, in, out, pdl, fusion};
  if (dtype == DType::kFloat16)
    launch_typed<__half>(p, f32_out, stream);
  else
    launch_typed<__nv_bfloat16>(p, f32_out, stream);
}

}  // namespace l2kv
