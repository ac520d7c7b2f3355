// Per-token fp8 quantization (fp8_activations.h): one block per row; the row is read once for
// its largest magnitude and again (from L2) to store its codes, 8 values per 16-byte load.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/fp8.cuh"
#include "l2kv/kernels/model/fp8_activations.h"

namespace l2kv {
namespace {

constexpr int kThreads = 256;
constexpr int kPerVec = 8;  // 16-bit values per 16-byte load
constexpr float kE4M3Max = 448.f;

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else {
    return __bfloat162float(v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    quantize_rows_kernel(const T* x, int64_t in, uint8_t* codes, float* scales) {
  const int64_t row = blockIdx.x;
  const uint4* vecs = reinterpret_cast<const uint4*>(x + row * in);
  const int64_t num_vecs = in / kPerVec;
  float amax = 0.f;
  for (int64_t v = threadIdx.x; v < num_vecs; v += kThreads) {
    const uint4 raw = vecs[v];
    const T* vals = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kPerVec; ++i) amax = fmaxf(amax, fabsf(to_float(vals[i])));
  }
  __shared__ float warp_max[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2)
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = 0.f;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) amax = fmaxf(amax, warp_max[w]);
  // IEEE division, as the host reference computes it.
  const float scale = amax > 0.f ? __fdiv_rn(amax, kE4M3Max) : 1.f;
  if (threadIdx.x == 0) scales[row] = scale;
  uint2* out = reinterpret_cast<uint2*>(codes + row * in);
  for (int64_t v = threadIdx.x; v < num_vecs; v += kThreads) {
    const uint4 raw = vecs[v];
    const T* vals = reinterpret_cast<const T*>(&raw);
    uint8_t q[kPerVec];
#pragma unroll
    for (int i = 0; i < kPerVec; ++i) q[i] = fp8::from_float(__fdiv_rn(to_float(vals[i]), scale));
    out[v] = *reinterpret_cast<const uint2*>(q);
  }
}

template <typename T>
__global__ void rescale_kernel(const float* product, const float* row_scales,
                               const float* col_scales, int64_t rows, int64_t out, T* y) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * out) return;
  const float v = product[i] * row_scales[i / out] * col_scales[i % out];
  if constexpr (std::is_same_v<T, __half>) {
    y[i] = __float2half_rn(v);
  } else {
    y[i] = __float2bfloat16_rn(v);
  }
}

}  // namespace

void rescale_fp8_product(DType dtype, const float* product, const float* row_scales,
                         const float* col_scales, int64_t rows, int64_t out, void* y,
                         cudaStream_t stream) {
  const int64_t n = rows * out;
  const auto blocks = static_cast<unsigned>((n + kThreads - 1) / kThreads);
  if (dtype == DType::kFloat16)
    rescale_kernel<__half><<<blocks, kThreads, 0, stream>>>(product, row_scales, col_scales, rows,
                                                            out, static_cast<__half*>(y));
  else
    rescale_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(
        product, row_scales, col_scales, rows, out, static_cast<__nv_bfloat16*>(y));
  L2KV_CUDA_CHECK(cudaGetLastError());
}

void quantize_rows_fp8(DType dtype, const void* x, int64_t rows, int64_t in, uint8_t* codes,
                       float* scales, cudaStream_t stream) {
  if (rows < 1 || in < kPerVec || in % kPerVec != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(codes) % 8 != 0 || scales == nullptr)
    throw Error(
        "quantize_rows_fp8: needs rows >= 1, in a positive multiple of 8, x 16-byte and "
        "the codes 8-byte aligned (rows " +
        std::to_string(rows) + ", in " + std::to_string(in) + ")");
  if (dtype == DType::kFloat16)
    quantize_rows_kernel<__half><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const __half*>(x), in, codes, scales);
  else
    quantize_rows_kernel<__nv_bfloat16><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(x), in, codes, scales);
  L2KV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace l2kv
