// Element types of activations and the KV cache, and host-side conversions for references
// and tests (the device side uses cuda_fp16.h / cuda_bf16.h).
#pragma once

#include <algorithm>
#include <cmath>
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

// fp8 E4M3 (OCP "fn" variant, as cuda_fp8.h's __NV_E4M3): 1 sign, 4 exponent (bias 7), 3
// mantissa bits; no infinities, S.1111.111 is NaN; largest finite 448, smallest 2^-9.
inline float fp8_e4m3_bits_to_float(uint8_t bits) {
  const float sign = (bits & 0x80u) ? -1.f : 1.f;
  const int exp = (bits >> 3) & 0xf;
  const int mant = bits & 0x7;
  if (exp == 15 && mant == 7) return sign * __builtin_nanf("");
  if (exp == 0) return sign * static_cast<float>(mant) * 0x1p-9f;  // subnormal: mant/8 * 2^-6
  const int biased = exp - 7;
  return sign * (1.f + static_cast<float>(mant) / 8.f) *
         static_cast<float>(std::ldexp(1.0, biased));
}

// Round to nearest even, saturating at +-448 (the device's __NV_SATFINITE conversion).
inline uint8_t float_to_fp8_e4m3_bits(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.f) return sign | 0x7e;
  if (a == 0.f) return sign;
  int e = 0;
  std::frexp(a, &e);                    // a in [2^(e-1), 2^e)
  const int exp = std::max(e - 1, -6);  // below 2^-6 the quantum stays 2^-9 (subnormals)
  // a / quantum is exact (a power-of-two scale); nearbyint rounds half to even.
  const auto steps = static_cast<uint32_t>(std::nearbyint(std::ldexp(a, 3 - exp)));
  if (e - 1 < -6) return sign | static_cast<uint8_t>(steps);  // 8 steps = the smallest normal
  // steps in [8, 16]: 16 carries into the next exponent, which the addition does by itself.
  return sign | static_cast<uint8_t>(((exp + 7) << 3) + (steps - 8));
}

inline float dtype_bits_to_float(DType t, uint16_t bits) {
  return t == DType::kFloat16 ? fp16_bits_to_float(bits) : bf16_bits_to_float(bits);
}
inline uint16_t float_to_dtype_bits(DType t, float f) {
  return t == DType::kFloat16 ? float_to_fp16_bits(f) : float_to_bf16_bits(f);
}

}  // namespace l2kv
