// Device steps of per-token fp8 activations (fp8_activations.h), shared by the standalone
// quantize / rescale kernels and the ops that fuse them (add_rmsnorm, gated_mul), so both give
// the same codes and values bit for bit.
#pragma once

#include <cstdint>

#include "l2kv/kernels/fp8.cuh"
#include "l2kv/kernels/model/fp8_activations.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv::fp8_rows {

inline constexpr float kE4M3Max = 448.f;

// A row's scale from its largest magnitude; IEEE division, as the host reference computes it.
__device__ __forceinline__ float row_scale(float amax) {
  return amax > 0.f ? __fdiv_rn(amax, kE4M3Max) : 1.f;
}

__device__ __forceinline__ uint8_t code(float value, float scale) {
  return fp8::from_float(__fdiv_rn(value, scale));
}

// Eight codes of eight values, stored as one 8-byte word.
__device__ __forceinline__ void store_codes(uint8_t* dst, const float (&v)[8], float scale) {
  uint8_t q[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) q[i] = code(v[i], scale);
  *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(q);
}

// One element of an fp8 product scaled back and rounded to T: (product * row) * column.
template <typename T>
__device__ __forceinline__ float rescaled(float product, float row_scale, float col_scale) {
  using Traits = tc::ElementTraits<T>;
  return Traits::to_float(Traits::from_float(product * row_scale * col_scale));
}

// Elements [c, c + 8) of row r of a product `width` wide (c and width multiples of 8), scaled
// back and rounded to T.
template <typename T>
__device__ __forceinline__ void load_rescaled(const Fp8Product& p, int64_t width, int64_t r,
                                              int64_t c, float (&v)[8]) {
  const float4* prod = reinterpret_cast<const float4*>(p.product + r * width + c);
  const float4* cols = reinterpret_cast<const float4*>(p.col_scales + c);
  const float4 p0 = prod[0], p1 = prod[1], c0 = cols[0], c1 = cols[1];
  const float rs = p.row_scales[r];
  v[0] = rescaled<T>(p0.x, rs, c0.x), v[1] = rescaled<T>(p0.y, rs, c0.y);
  v[2] = rescaled<T>(p0.z, rs, c0.z), v[3] = rescaled<T>(p0.w, rs, c0.w);
  v[4] = rescaled<T>(p1.x, rs, c1.x), v[5] = rescaled<T>(p1.y, rs, c1.y);
  v[6] = rescaled<T>(p1.z, rs, c1.z), v[7] = rescaled<T>(p1.w, rs, c1.w);
}

}  // namespace l2kv::fp8_rows
