#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "l2kv/core/cuda_check.h"
#include "l2kv/kernels/fp8.cuh"
#include "l2kv/kernels/random_fill.h"

namespace l2kv {
namespace {

__device__ __forceinline__ uint64_t mix(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

template <typename T>
__global__ void fill_random_kernel(T* data, int64_t count, float scale, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < count;
       i += int64_t{gridDim.x} * blockDim.x) {
    const float u =
        static_cast<float>(mix(seed ^ mix(static_cast<uint64_t>(i))) >> 40) * (1.0f / 16777216.0f);
    const float v = (2.f * u - 1.f) * scale;
    if constexpr (std::is_same_v<T, __half>)
      data[i] = __float2half_rn(v);
    else if constexpr (std::is_same_v<T, uint8_t>)
      data[i] = fp8::from_float(v);
    else
      data[i] = __float2bfloat16_rn(v);
  }
}

}  // namespace

void fill_random(void* data, int64_t count, DType dtype, float scale, uint64_t seed,
                 cudaStream_t stream) {
  constexpr int kBlocks = 132 * 16, kThreads = 256;
  if (dtype == DType::kFloat16)
    fill_random_kernel<<<kBlocks, kThreads, 0, stream>>>(static_cast<__half*>(data), count, scale,
                                                         seed);
  else
    fill_random_kernel<<<kBlocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(data), count,
                                                         scale, seed);
  L2KV_CUDA_CHECK_LAUNCH();
}

void fill_random_fp8_e4m3(void* data, int64_t count, float scale, uint64_t seed,
                          cudaStream_t stream) {
  fill_random_kernel<<<132 * 16, 256, 0, stream>>>(static_cast<uint8_t*>(data), count, scale, seed);
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv
