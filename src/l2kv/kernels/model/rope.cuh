// Neox RoPE of one pair, shared by ops::rope_and_cache and the QKV GEMV's epilogue so both
// round the same way.
#pragma once

#include <cstdint>
#include <type_traits>

#include "l2kv/kernels/fp8.cuh"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {

// The pair (a, b) rotated by the angle whose sine and cosine are s and c, rounded to T. Spelled
// with explicit roundings so that every caller rounds alike whatever the compiler would contract
// into fused multiply-adds in its context (the QKV GEMV's epilogue must match rope_and_cache bit
// for bit).
template <typename T>
__device__ __forceinline__ void rotate_pair_by(float a, float b, float s, float c, T& ra, T& rb) {
  using Traits = tc::ElementTraits<T>;
  ra = Traits::from_float(__fmaf_rn(a, c, -__fmul_rn(b, s)));
  rb = Traits::from_float(__fmaf_rn(b, c, __fmul_rn(a, s)));
}

// Neox RoPE of the pair (a, b) = (x[i], x[i + head_dim / 2]) at `pos`, rounded to T: what the
// cache stores, and what the calculated fp8 scales measure.
template <typename T>
__device__ __forceinline__ void rotate_pair(float a, float b, float pos, float inv_freq, T& ra,
                                            T& rb) {
  float s, c;
  sincosf(pos * inv_freq, &s, &c);
  rotate_pair_by(a, b, s, c, ra, rb);
}

// What a paged KV pool stores for the 16-bit `value`: the value itself, or with kFp8 its E4M3 of
// value x inv_scale (1 / the layer's key or value scale). Shared by the rope_and_cache kernels.
template <bool kFp8, typename T>
__device__ __forceinline__ std::conditional_t<kFp8, uint8_t, T> kv_stored(T value,
                                                                          float inv_scale) {
  if constexpr (kFp8)
    return fp8::from_float(tc::ElementTraits<T>::to_float(value) * inv_scale);
  else
    return value;
}

}  // namespace l2kv
