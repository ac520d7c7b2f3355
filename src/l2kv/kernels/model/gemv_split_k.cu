// SplitKGemv (gemv_split_k.h). Warp (f, k) of a block, f < 4 and k < 2, owns output features
// [64 b + 16 f, +16) and takes iterations k, k + 2, ... of its split's K range, loading W and
// x straight into mma fragments (gemv_fragments.cuh), so the warps f = 0..3 of one k read the
// same x vectors together.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/gemv_fragments.cuh"
#include "l2kv/kernels/model/gemv_split_k.h"

namespace l2kv {
namespace {

using namespace gemv_detail;

constexpr int kFeatureTiles = 4;  // 16-feature warp tiles per block
constexpr int kKGroups = 2;       // warps per feature tile, taking alternate iterations
constexpr int kWarps = kFeatureTiles * kKGroups;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kFeaturesPerBlock = kFeatureTiles * kRowsPerBlock;

struct SplitKParams {
  const void* x;
  const void* w;
  void* y;
  float* partials;
  int* counters;
  int64_t rows, in, out;
  int splits;
  int64_t split_vecs;  // 16-byte vectors of each split's K range (the last may be shorter)
  bool pdl;
};

template <typename T, typename OutT, int kNTiles>
__global__ void __launch_bounds__(kThreads, 2) split_k_kernel(SplitKParams p) {
  ptx::launch_dependents();
  using Tiling = GemvTiling<kNTiles>;
  __shared__ float partial[kWarps][Tiling::kAccs][kWarpSize];
  __shared__ bool last_split;

  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int tile = warp % kFeatureTiles, group = warp / kFeatureTiles;
  const int g = lane / kLanesPerRow, t = lane % kLanesPerRow;
  const int64_t block_feature = int64_t{blockIdx.x} * kFeaturesPerBlock;
  const int64_t first_feature = block_feature + tile * kRowsPerBlock;
  const int64_t vecs = p.in / kElemsPerVec;
  const int64_t v0 = int64_t{blockIdx.y} * p.split_vecs;
  const int64_t split_vecs = min(p.split_vecs, vecs - v0);
  // Features past the end of W and rows past the end of x read the last one (valid memory);
  // their results are never stored.
  const int64_t w_row_lo = min(first_feature + g, p.out - 1);
  const int64_t w_row_hi = min(first_feature + g + kRowsPerBlock / 2, p.out - 1);
  const uint4* w = static_cast<const uint4*>(p.w);
  const uint4* w_lo = w + w_row_lo * vecs + v0 + t;
  const uint4* w_hi = w + w_row_hi * vecs + v0 + t;
  XSource<T, kNTiles, false> xs;
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
    const int64_t row = min(int64_t{nt * kColsPerTile + g}, p.rows - 1);
    xs.x[nt] = static_cast<const uint4*>(p.x) + row * vecs + v0 + t;
  }

  const int64_t full_iters = split_vecs / Tiling::kVecsPerIter;
  const bool has_tail = split_vecs % Tiling::kVecsPerIter != 0;
  const int64_t lane_vecs = split_vecs - t;
  WeightVecs<kNTiles> wv;
  int64_t it = group;
  if (it < full_iters)
    load_weights<kNTiles, false>(wv, w_lo, w_hi, it * Tiling::kVecsPerIter, lane_vecs);
  else if (it == full_iters && has_tail)
    load_weights<kNTiles, true>(wv, w_lo, w_hi, it * Tiling::kVecsPerIter, lane_vecs);
  if (p.pdl) ptx::grid_dependency_wait();

  float acc[kNTiles][4] = {};
  for (; it < full_iters; it += kKGroups) {
    if (it != group)
      load_weights<kNTiles, false>(wv, w_lo, w_hi, it * Tiling::kVecsPerIter, lane_vecs);
    multiply<T, kNTiles, false>(acc, wv, xs, it * Tiling::kVecsPerIter, lane_vecs);
  }
  if (it == full_iters && has_tail) {
    if (it != group)
      load_weights<kNTiles, true>(wv, w_lo, w_hi, it * Tiling::kVecsPerIter, lane_vecs);
    multiply<T, kNTiles, true>(acc, wv, xs, it * Tiling::kVecsPerIter, lane_vecs);
  }

  // Sum the K groups' tiles (C fragment layout as in gemv.cu: accumulator r of tile nt is
  // feature g + 8 * (r / 2) of the warp's tile, x row 8 nt + 2t + r % 2), then store y or
  // this split's partial.
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[warp][nt * 4 + r][lane] = acc[nt][r];
  __syncthreads();
  constexpr int kJobsPerTile = kNTiles * 2 * kWarpSize;
  const bool split = p.splits > 1;
  for (int j = static_cast<int>(threadIdx.x); j < kFeatureTiles * kJobsPerTile; j += kThreads) {
    const int f = j / kJobsPerTile, nt = (j / (2 * kWarpSize)) % kNTiles;
    const int c = (j / kWarpSize) % 2, l = j % kWarpSize;
    float lo = 0.f, hi = 0.f;
#pragma unroll
    for (int k = 0; k < kKGroups; ++k) {
      lo += partial[f + k * kFeatureTiles][nt * 4 + c][l];
      hi += partial[f + k * kFeatureTiles][nt * 4 + c + 2][l];
    }
    const int64_t n = block_feature + f * kRowsPerBlock + l / kLanesPerRow;  // and n + 8
    const int64_t m = nt * kColsPerTile + 2 * (l % kLanesPerRow) + c;
    if (m >= p.rows) continue;
    if (split) {
      float* part = p.partials + (int64_t{blockIdx.y} * p.rows + m) * p.out;
      if (n < p.out) part[n] = lo;
      if (n + kRowsPerBlock / 2 < p.out) part[n + kRowsPerBlock / 2] = hi;
    } else {
      OutT* y = static_cast<OutT*>(p.y) + m * p.out;
      if (n < p.out) y[n] = to_output<OutT>(lo);
      if (n + kRowsPerBlock / 2 < p.out) y[n + kRowsPerBlock / 2] = to_output<OutT>(hi);
    }
  }
  if (!split) return;

  // The last split of this feature block to finish sums all of them in split order.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last_split = atomicAdd(&p.counters[blockIdx.x], 1) == p.splits - 1;
  __syncthreads();
  if (!last_split) return;
  __threadfence();
  const int64_t features = min(int64_t{kFeaturesPerBlock}, p.out - block_feature);
  for (int64_t i = threadIdx.x; i < p.rows * features; i += kThreads) {
    const int64_t m = i / features, n = block_feature + i % features;
    float sum = 0.f;
    for (int s = 0; s < p.splits; ++s) sum += __ldcg(p.partials + (s * p.rows + m) * p.out + n);
    static_cast<OutT*>(p.y)[m * p.out + n] = to_output<OutT>(sum);
  }
  if (threadIdx.x == 0) p.counters[blockIdx.x] = 0;  // ready for the next call
}

template <typename T, typename OutT>
void launch(const SplitKParams& p, cudaStream_t stream) {
  const auto feature_blocks =
      static_cast<unsigned>((p.out + kFeaturesPerBlock - 1) / kFeaturesPerBlock);
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config =
      launch_config(dim3(feature_blocks, static_cast<unsigned>(p.splits)), dim3(kThreads), 0,
                    stream, p.pdl, attribute);
  if (p.rows <= 4 * kColsPerTile)
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, split_k_kernel<T, OutT, 4>, p));
  else
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, split_k_kernel<T, OutT, 8>, p));
}

// K vectors per warp iteration, the larger of the two tilings (the split size's unit).
constexpr int64_t kSplitUnit =
    std::max(GemvTiling<4>::kVecsPerIter, GemvTiling<8>::kVecsPerIter) * kKGroups;

}  // namespace

SplitKGemv::SplitKGemv() {
  int device = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&device));
  L2KV_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, device));
  L2KV_CUDA_CHECK(
      cudaMalloc(&partials_, sizeof(float) * kMaxSplits * kMaxRows * static_cast<size_t>(kMaxOut)));
  const size_t counters = kMaxOut / kFeaturesPerBlock;
  L2KV_CUDA_CHECK(cudaMalloc(&counters_, sizeof(int) * counters));
  L2KV_CUDA_CHECK(cudaMemset(counters_, 0, sizeof(int) * counters));
}

SplitKGemv::~SplitKGemv() {
  cudaFree(partials_);
  cudaFree(counters_);
}

bool SplitKGemv::supports(int64_t rows, int64_t in, int64_t out, const void* x, const void* w) {
  return rows >= 1 && rows <= kMaxRows && in >= kElemsPerVec && in % kElemsPerVec == 0 &&
         out >= 1 && out <= kMaxOut && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

int SplitKGemv::splits_for(int64_t in, int64_t out, int sms) {
  const int64_t feature_blocks = (out + kFeaturesPerBlock - 1) / kFeaturesPerBlock;
  const int64_t by_grid = std::max<int64_t>(1, 2 * int64_t{sms} / feature_blocks);
  const int64_t by_k = std::max<int64_t>(1, in / kElemsPerVec / kSplitUnit);
  return static_cast<int>(std::min<int64_t>({by_grid, by_k, kMaxSplits}));
}

void SplitKGemv::run(DType dtype, const void* x, const void* w, void* y, bool f32_out, int64_t rows,
                     int64_t in, int64_t out, cudaStream_t stream, bool pdl) {
  if (!supports(rows, in, out, x, w))
    throw Error("SplitKGemv: unsupported problem rows=" + std::to_string(rows) +
                " in=" + std::to_string(in) + " out=" + std::to_string(out) +
                " (needs 1 <= rows <= 64, in a positive multiple of 8, out <= 8192, 16-byte "
                "aligned x and w)");
  const int64_t vecs = in / kElemsPerVec;
  int splits = splits_for(in, out, sms_);
  // Whole units per split, and no empty split after rounding.
  const int64_t units = (vecs + kSplitUnit - 1) / kSplitUnit;
  const int64_t split_vecs = (units + splits - 1) / splits * kSplitUnit;
  splits = static_cast<int>((vecs + split_vecs - 1) / split_vecs);
  const SplitKParams p{x, w, y, partials_, counters_, rows, in, out, splits, split_vecs, pdl};
  if (dtype == DType::kFloat16) {
    if (f32_out)
      launch<__half, float>(p, stream);
    else
      launch<__half, __half>(p, stream);
  } else {
    if (f32_out)
      launch<__nv_bfloat16, float>(p, stream);
    else
      launch<__nv_bfloat16, __nv_bfloat16>(p, stream);
  }
}

}  // namespace l2kv
