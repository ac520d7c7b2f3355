// fp8 E4M3 on the device: the KV cache's stored form. Every E4M3 value is exact in fp16 and
// bf16, so the attention kernels widen stored K/V and keep their 16-bit tensor-core path (the
// split kernel in fp16, one instruction per pair; prefill in the model's dtype); the per-layer
// scales fold into the softmax scale (K) and the output (V).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

namespace l2kv::fp8 {

// value -> E4M3, round to nearest even, saturating at +-448.
__device__ __forceinline__ uint8_t from_float(float value) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(value, __NV_SATFINITE, __NV_E4M3));
}

// Two E4M3 values (low byte first) -> two 16-bit values packed as the MMA operands expect.
// Two E4M3 values (the low 16 bits, low byte first) -> fp16x2, in one instruction.
__device__ __forceinline__ uint32_t widen2_half(uint32_t pair) {
  const __half2_raw h =
      __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(pair), __NV_E4M3);
  return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}

template <typename T>
__device__ __forceinline__ uint32_t widen2(uint16_t pair) {
  const uint32_t half2 = widen2_half(pair);
  if constexpr (std::is_same_v<T, __half>) {
    return half2;
  } else {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&half2));
    const __nv_bfloat162 b = __float22bfloat162_rn(f);  // exact: E4M3 fits in bf16
    return *reinterpret_cast<const uint32_t*>(&b);
  }
}

// 16 E4M3 values -> 16 16-bit values, as two 16-byte chunks.
template <typename T>
__device__ __forceinline__ void widen16(uint4 raw, uint4& low, uint4& high) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
  uint32_t out[8];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = widen2<T>(static_cast<uint16_t>(words[i] & 0xffffu));
    out[2 * i + 1] = widen2<T>(static_cast<uint16_t>(words[i] >> 16));
  }
  low = make_uint4(out[0], out[1], out[2], out[3]);
  high = make_uint4(out[4], out[5], out[6], out[7]);
}

}  // namespace l2kv::fp8
