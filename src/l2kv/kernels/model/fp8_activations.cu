// Per-token fp8 quantization (fp8_activations.h): one block per row; the row is read once for
// its largest magnitude and again (from L2) to store its codes, 8 values per 16-byte load.
#include <string>
#include <type_traits>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/block_reduce.cuh"
#include "l2kv/kernels/dtype_dispatch.cuh"
#include "l2kv/kernels/model/fp8_activations.cuh"
#include "l2kv/kernels/model/fp8_activations.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {
namespace {

constexpr int kThreads = 256;
constexpr int kPerVec = 8;  // 16-bit values per 16-byte load

template <typename T>
__global__ void __launch_bounds__(kThreads)
    quantize_rows_kernel(const T* x, int64_t in, uint8_t* codes, float* scales) {
  using Traits = tc::ElementTraits<T>;
  const int64_t row = blockIdx.x;
  const uint4* vecs = reinterpret_cast<const uint4*>(x + row * in);
  const int64_t num_vecs = in / kPerVec;
  float amax = 0.f;
  for (int64_t v = threadIdx.x; v < num_vecs; v += kThreads) {
    const uint4 raw = vecs[v];
    const T* vals = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kPerVec; ++i) amax = fmaxf(amax, fabsf(Traits::to_float(vals[i])));
  }
  const float scale = fp8_rows::row_scale(block_max(amax));
  if (threadIdx.x == 0) scales[row] = scale;
  for (int64_t v = threadIdx.x; v < num_vecs; v += kThreads) {
    const uint4 raw = vecs[v];
    const T* vals = reinterpret_cast<const T*>(&raw);
    float f[kPerVec];
#pragma unroll
    for (int i = 0; i < kPerVec; ++i) f[i] = Traits::to_float(vals[i]);
    fp8_rows::store_codes(codes + row * in + v * kPerVec, f, scale);
  }
}

template <typename T>
__global__ void rescale_kernel(const float* product, const float* row_scales,
                               const float* col_scales, int64_t rows, int64_t out, T* y) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * out) return;
  y[i] = tc::ElementTraits<T>::from_float(
      fp8_rows::rescaled<T>(product[i], row_scales[i / out], col_scales[i % out]));
}

}  // namespace

void rescale_fp8_product(DType dtype, const float* product, const float* row_scales,
                         const float* col_scales, int64_t rows, int64_t out, void* y,
                         cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((rows * out + kThreads - 1) / kThreads);
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rescale_kernel<T><<<blocks, kThreads, 0, stream>>>(product, row_scales, col_scales, rows, out,
                                                       static_cast<T*>(y));
  });
  L2KV_CUDA_CHECK_LAUNCH();
}

void quantize_rows_fp8(DType dtype, const void* x, int64_t rows, int64_t in, uint8_t* codes,
                       float* scales, cudaStream_t stream) {
  if (rows < 1 || in < kPerVec || in % kPerVec != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(codes) % 8 != 0 || scales == nullptr)
    throw Error(
        "quantize_rows_fp8: needs rows >= 1, in a positive multiple of 8, x 16-byte and "
        "the codes 8-byte aligned (rows " +
        std::to_string(rows) + ", in " + std::to_string(in) + ")");
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    quantize_rows_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), in, codes, scales);
  });
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv
