// Qwen3's per-head RMSNorm of q and k, step by step, shared by every kernel that normalizes a
// head (ops::rope_and_cache, the fp8 KV-scale kernel, the QKV GEMV's RoPE epilogue) so that all
// of them store the same bits.
#pragma once

#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {

// The sum of squares of the head of a pair (x[i], x[i + head_dim / 2]): one term per pair, summed
// over the leading `lanes` lanes of a warp (to lane 0), then over the warps in order.
__device__ __forceinline__ float pair_sumsq(float a, float b) {
  return __fmaf_rn(a, a, __fmul_rn(b, b));  // pinned: no contraction chosen per call site
}

// Called by exactly the `lanes` (1 to 32) leading lanes of the warp.
__device__ __forceinline__ float warp_sum_leading(float v, int lanes) {
  const unsigned mask = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
  const int lane = static_cast<int>(threadIdx.x % 32);
  for (int m = 16; m >= 1; m /= 2) {
    const float other = __shfl_down_sync(mask, v, m);
    if (lane + m < lanes) v += other;  // a lane past `lanes` returned nothing defined
  }
  return v;
}

__device__ __forceinline__ float head_rms_scale(float sumsq, int head_dim, float eps) {
  return __frsqrt_rn(sumsq / static_cast<float>(head_dim) + eps);  // correctly rounded
}

// One head element as transformers computes it: normalized in fp32, rounded to T, times the
// weight, rounded to T again (the value RoPE then rotates).
template <typename T>
__device__ __forceinline__ float head_norm(float x, float scale, float gamma) {
  using Traits = tc::ElementTraits<T>;
  const float normed = Traits::to_float(Traits::from_float(x * scale));
  return Traits::to_float(Traits::from_float(gamma * normed));
}

}  // namespace l2kv
