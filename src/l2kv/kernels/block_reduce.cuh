// Reductions over a thread block (any multiple of 32 threads up to 1024): a warp's shuffle
// reduction, then one value per warp through shared memory; every thread gets the result. Each
// call first waits for the whole block, so a second call cannot overwrite the shared values
// while a slow warp still reads the first call's.
#pragma once

namespace l2kv {

inline constexpr int kBlockReduceMaxWarps = 1024 / 32;

__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[kBlockReduceMaxWarps];
  for (int m = 16; m >= 1; m /= 2) v += __shfl_xor_sync(0xffffffffu, v, m);
  __syncthreads();
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < static_cast<int>(blockDim.x) / 32; ++w) total += partial[w];
  return total;
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[kBlockReduceMaxWarps];
  for (int m = 16; m >= 1; m /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, m));
  __syncthreads();
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float most = partial[0];
  for (int w = 1; w < static_cast<int>(blockDim.x) / 32; ++w) most = fmaxf(most, partial[w]);
  return most;
}

}  // namespace l2kv
