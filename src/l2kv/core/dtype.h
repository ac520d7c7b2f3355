// Element types of activations and the KV cache, and host-side conversions for references
// and tests (the device side uses cuda_fp16.h / cuda_bf16.h).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

namespace l2kv {

enum class DType : uint8_t { kFloat16, kBFloat16 };

constexpr int dtype_bytes(DType) {
  return 2;
}

constexpr std::string_view dtype_name(DType t) {
  return t == DType::kFloat16 ? "fp16" : "bf16";
}

inline float bf16_bits_to_float(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even, as the device conversion does.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: renormalize
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      u = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Round to nearest even; overflow goes to infinity.
inline uint16_t float_to_fp16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: infinity
  if (abs < 0x33000000u) return sign;             // below half the smallest subnormal
  int exp = static_cast<int>(abs >> 23) - 127;
  uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  int shift = exp < -14 ? (-14 - exp) + 13 : 13;  // subnormals keep fewer bits
  uint32_t result_mant = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (result_mant & 1u))) ++result_mant;
  if (exp < -14) return sign | static_cast<uint16_t>(result_mant);
  uint32_t bits = (static_cast<uint32_t>(exp + 15) << 10) + (result_mant - 0x400u);
  return sign | static_cast<uint16_t>(bits);  // a mantissa carry rolls into the exponent
}

inline float dtype_bits_to_float(DType t, uint16_t bits) {
  return t == DType::kFloat16 ? fp16_bits_to_float(bits) : bf16_bits_to_float(bits);
}
inline uint16_t float_to_dtype_bits(DType t, float f) {
  return t == DType::kFloat16 ? float_to_fp16_bits(f) : float_to_bf16_bits(f);
}

}  // namespace l2kv
