// The fp8-weight decode GEMV (gemv_fp8.h). Layout as gemv.cu's kernel: a block owns 16 output
// features and one group of up to 16 x rows, its 8 warps split `in`, each accumulating a 16 x
// (8 * kNTiles) tile with mma.m16n8k16 and the warps' tiles summed through shared memory.
// Lane (g, t) = (lane / 4, lane % 4) loads 16 consecutive k of W rows g and g + 8 (one 16-byte
// vector of E4M3 each) and the same 16 k of x row g (two 16-byte vectors); widened, the W
// vector is two 8-k halves, each the A fragments of two mma exactly as gemv.cu's 16-bit vector
// is (the k order inside an mma is free when A and B share it).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <string>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/fp8.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/gemv_fp8.h"
#include "l2kv/kernels/model/gemv_weight_loads.cuh"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kFeaturesPerBlock = 16;  // the mma's M
constexpr int kRowsPerGroup = 16;      // x rows of one block: two 8-row mma tiles
constexpr int kLanesPerRow = gemv_loads::kLanesPerRow;
constexpr int kWeightsPerVec = 16;  // E4M3 per 16-byte load
constexpr int kXPerVec = 8;         // 16-bit x per 16-byte load

struct Fp8GemvParams {
  const void* x;
  Fp8Weights w;
  void* y;
  int64_t rows, in, out;
  int64_t row_groups;  // ceil(rows / 16): blocks per 16 features
  bool pdl;
};

// kUnroll: 16-byte W loads per row per lane per iteration; kMinBlocks: blocks per SM the
// registers must allow. One x tile (1-8 rows) loads 2 vectors per row per lane at a time with
// four blocks per SM: on an H200 (bench/NOTES.md, "fp8 scales fused into the norms, SiLU x up
// and RoPE") a llama3-8b-fp8 step at batch 1 ran 3.26 ms against 3.36 with 8 vectors and two
// blocks, and 3.80 against 3.93 ms at batch 8; loading the next iteration before multiplying
// this one (two register sets) was no faster.
template <typename T, int kNTiles, int kUnroll, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks) gemv_fp8_kernel(const Fp8GemvParams p) {
  ptx::launch_dependents();  // the kernel behind may start; it waits for this grid
  constexpr int kVecsPerIter = kLanesPerRow * kUnroll;
  __shared__ float partial[kWarps][4 * kNTiles][kWarpSize];

  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int g = lane / kLanesPerRow, t = lane % kLanesPerRow;
  const int64_t first_feature = int64_t{blockIdx.x} / p.row_groups * kFeaturesPerBlock;
  const int64_t first_row = int64_t{blockIdx.x} % p.row_groups * kRowsPerGroup;
  const int64_t vecs = p.in / kWeightsPerVec;  // W vectors per row
  const int64_t lane_vecs = vecs - t;          // the lane's vectors r < lane_vecs are in the row
  // Rows past the end of W or x read the last row (valid memory); their results are dropped.
  const auto* w = reinterpret_cast<const uint4*>(p.w.data);
  const uint4* w_lo = w + min(first_feature + g, p.out - 1) * vecs + t;
  const uint4* w_hi = w + min(first_feature + g + kFeaturesPerBlock / 2, p.out - 1) * vecs + t;
  const uint4* xs[kNTiles];
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
    const int64_t row = min(first_row + nt * 8 + g, p.rows - 1);
    xs[nt] = static_cast<const uint4*>(p.x) + row * (p.in / kXPerVec) + 2 * t;
  }

  using Vecs = gemv_loads::WeightVecs<kUnroll>;
  auto load = [&](Vecs& wv, int64_t it) {
    gemv_loads::load_weights<kUnroll, true>(wv, w_lo, w_hi, it * kVecsPerIter, lane_vecs);
  };
  float acc[kNTiles][4] = {};
  auto multiply = [&](const Vecs& wv, int64_t it) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t r = it * kVecsPerIter + u * kLanesPerRow;
      uint4 xv[kNTiles][2];
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        const bool in_row = r < lane_vecs;
        xv[nt][0] = in_row ? __ldg(xs[nt] + 2 * r) : make_uint4(0, 0, 0, 0);
        xv[nt][1] = in_row ? __ldg(xs[nt] + 2 * r + 1) : make_uint4(0, 0, 0, 0);
      }
      uint4 wl[2], wh[2];
      fp8::widen16<T>(wv.lo[u], wl[0], wl[1]);
      fp8::widen16<T>(wv.hi[u], wh[0], wh[1]);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t a0[4] = {wl[h].x, wh[h].x, wl[h].y, wh[h].y};
        const uint32_t a1[4] = {wl[h].z, wh[h].z, wl[h].w, wh[h].w};
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          const uint32_t b0[2] = {xv[nt][h].x, xv[nt][h].y};
          const uint32_t b1[2] = {xv[nt][h].z, xv[nt][h].w};
          tc::mma_m16n8k16<T>(acc[nt], a0, b0);
          tc::mma_m16n8k16<T>(acc[nt], a1, b1);
        }
      }
    }
  };
  const int64_t iters = (vecs + kVecsPerIter - 1) / kVecsPerIter;
  // The weights do not depend on the kernel ahead: the first iteration's are in flight before
  // the wait.
  Vecs wv;
  if (warp < iters) load(wv, warp);
  if (p.pdl) ptx::grid_dependency_wait();
  for (int64_t it = warp; it < iters; it += kWarps) {
    if (it != warp) load(wv, it);
    multiply(wv, it);
  }
  // Accumulator r of tile nt is feature first_feature + g + 8 * (r / 2), x row
  // first_row + 8 nt + 2t + r % 2 (the m16n8 C fragment).
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
    for (int r = 0; r < 4; ++r) partial[warp][nt * 4 + r][lane] = acc[nt][r];
  __syncthreads();
  using Traits = tc::ElementTraits<T>;
  for (int j = static_cast<int>(threadIdx.x); j < kNTiles * 2 * kWarpSize; j += kThreads) {
    const int nt = j / (2 * kWarpSize), c = (j / kWarpSize) % 2, l = j % kWarpSize;
    float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
    for (int wp = 0; wp < kWarps; ++wp) {
      sum_lo += partial[wp][nt * 4 + c][l];
      sum_hi += partial[wp][nt * 4 + c + 2][l];
    }
    const int64_t m = first_row + nt * 8 + 2 * (l % kLanesPerRow) + c;
    if (m >= p.rows) continue;
    T* y = static_cast<T*>(p.y);
    for (int half = 0; half < 2; ++half) {
      const int64_t n = first_feature + l / kLanesPerRow + half * (kFeaturesPerBlock / 2);
      if (n >= p.out) continue;
      const float scale = p.w.per_channel ? p.w.scale[n] : p.w.scale[0];
      y[m * p.out + n] = Traits::from_float(scale * (half == 0 ? sum_lo : sum_hi));
    }
  }
}

template <typename T>
__global__ void dequantize_fp8_kernel(const uint4* w, const float* scale, bool per_channel,
                                      int64_t vecs_per_row, int64_t total_vecs, uint4* out) {
  using Traits = tc::ElementTraits<T>;
  for (int64_t v = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; v < total_vecs;
       v += int64_t{gridDim.x} * blockDim.x) {
    const float s = per_channel ? scale[v / vecs_per_row] : scale[0];
    uint4 halves[2];
    fp8::widen16<T>(w[v], halves[0], halves[1]);
    for (uint4& half : halves) {
      T* e = reinterpret_cast<T*>(&half);
#pragma unroll
      for (int i = 0; i < kXPerVec; ++i) e[i] = Traits::from_float(s * Traits::to_float(e[i]));
    }
    out[2 * v] = halves[0];
    out[2 * v + 1] = halves[1];
  }
}

bool aligned_16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <typename T>
void launch(const Fp8GemvParams& p, cudaStream_t stream) {
  const int64_t blocks = (p.out + kFeaturesPerBlock - 1) / kFeaturesPerBlock * p.row_groups;
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config = launch_config(dim3(static_cast<unsigned>(blocks)),
                                                  dim3(kThreads), 0, stream, p.pdl, attribute);
  if (p.rows <= 8)
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, gemv_fp8_kernel<T, 1, 2, 4>, p));
  else
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, gemv_fp8_kernel<T, 2, 4, 2>, p));
}

}  // namespace

bool gemv_fp8_supports(int64_t rows, int64_t in, int64_t out, const void* x, const Fp8Weights& w) {
  const int64_t blocks = (out + kFeaturesPerBlock - 1) / kFeaturesPerBlock *
                         ((rows + kRowsPerGroup - 1) / kRowsPerGroup);
  return rows >= 1 && rows <= kGemvFp8MaxRows && in >= kWeightsPerVec && in % kWeightsPerVec == 0 &&
         out >= 1 && blocks <= INT_MAX && aligned_16(x) && w.data != nullptr &&
         aligned_16(w.data) && w.scale != nullptr;
}

void gemv_fp8(DType dtype, const void* x, const Fp8Weights& w, void* y, int64_t rows, int64_t in,
              int64_t out, cudaStream_t stream, bool pdl) {
  if (!gemv_fp8_supports(rows, in, out, x, w))
    throw Error("gemv_fp8: unsupported problem rows=" + std::to_string(rows) +
                " in=" + std::to_string(in) + " out=" + std::to_string(out) +
                " (needs 1 <= rows <= " + std::to_string(kGemvFp8MaxRows) +
                ", in a positive multiple of 16, 16-byte aligned x and weights, a scale)");
  const Fp8GemvParams p{x, w, y, rows, in, out, (rows + kRowsPerGroup - 1) / kRowsPerGroup, pdl};
  if (dtype == DType::kFloat16)
    launch<__half>(p, stream);
  else
    launch<__nv_bfloat16>(p, stream);
}

void dequantize_fp8(DType dtype, const Fp8Weights& w, int64_t out, int64_t in, void* dst,
                    cudaStream_t stream) {
  if (in % kWeightsPerVec != 0 || out < 1 || !aligned_16(w.data) || !aligned_16(dst) ||
      w.scale == nullptr)
    throw Error("dequantize_fp8: needs `in` a multiple of 16, 16-byte aligned data, a scale");
  const int64_t vecs_per_row = in / kWeightsPerVec, total = vecs_per_row * out;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 65536));
  if (dtype == DType::kFloat16)
    dequantize_fp8_kernel<__half>
        <<<blocks, 256, 0, stream>>>(reinterpret_cast<const uint4*>(w.data), w.scale, w.per_channel,
                                     vecs_per_row, total, static_cast<uint4*>(dst));
  else
    dequantize_fp8_kernel<__nv_bfloat16>
        <<<blocks, 256, 0, stream>>>(reinterpret_cast<const uint4*>(w.data), w.scale, w.per_channel,
                                     vecs_per_row, total, static_cast<uint4*>(dst));
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv
