// The host E4M3 conversions the fp8 KV cache's CPU reference and tests rely on.
#include <gtest/gtest.h>

#include <cmath>

#include "l2kv/core/dtype.h"

namespace l2kv {
namespace {

TEST(Fp8E4M3, DecodesKnownCodes) {
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x00), 0.f);
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x38), 1.f);  // exponent 7 = bias
  EXPECT_EQ(fp8_e4m3_bits_to_float(0xb8), -1.f);
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x7e), 448.f);    // largest finite
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x01), 0x1p-9f);  // smallest subnormal
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x08), 0x1p-6f);  // smallest normal
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x3c), 1.5f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_bits_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_bits_to_float(0xff)));
}

TEST(Fp8E4M3, EncodesEveryFiniteCodeBackToItself) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;  // NaN
    const float value = fp8_e4m3_bits_to_float(static_cast<uint8_t>(code));
    if (code == 0x80) {  // -0 keeps its sign
      EXPECT_EQ(float_to_fp8_e4m3_bits(value), 0x80);
      continue;
    }
    EXPECT_EQ(float_to_fp8_e4m3_bits(value), code) << "code " << code;
  }
}

TEST(Fp8E4M3, RoundsToNearestEvenAndSaturates) {
  EXPECT_EQ(float_to_fp8_e4m3_bits(1.0625f), 0x38);  // halfway 1 and 1.125: even (1)
  EXPECT_EQ(float_to_fp8_e4m3_bits(1.1875f), 0x3a);  // halfway 1.125 and 1.25: even (1.25)
  EXPECT_EQ(float_to_fp8_e4m3_bits(1.07f), 0x39);
  EXPECT_EQ(float_to_fp8_e4m3_bits(1000.f), 0x7e);  // saturates at 448
  EXPECT_EQ(float_to_fp8_e4m3_bits(-1e30f), 0xfe);
  EXPECT_EQ(float_to_fp8_e4m3_bits(0x1p-11f), 0x00);  // below half the smallest subnormal
  EXPECT_EQ(float_to_fp8_e4m3_bits(0x1p-10f * 1.01f), 0x01);
}

}  // namespace
}  // namespace l2kv
