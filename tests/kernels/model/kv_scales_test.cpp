// The math of calculated fp8 KV scales (kernels/model/kv_scales.h) on the host: where the first
// prompt's largest value lands in E4M3, the bounds of a scale, the ordering the device's atomic
// max relies on, and why scale 1 fails at real checkpoints' magnitudes while calculated scales
// keep E4M3's relative rounding.
#include "l2kv/kernels/model/kv_scales.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "l2kv/core/dtype.h"

namespace l2kv {
namespace {

// Relative L2 error of `x` stored as E4M3(x / scale) and read back as stored * scale.
double fp8_relative_l2(const std::vector<float>& x, float scale) {
  double d2 = 0, r2 = 0;
  for (float v : x) {
    const double back =
        static_cast<double>(fp8_e4m3_bits_to_float(float_to_fp8_e4m3_bits(v / scale))) * scale;
    d2 += (back - v) * (back - v);
    r2 += static_cast<double>(v) * v;
  }
  return std::sqrt(d2 / r2);
}

float amax(const std::vector<float>& x) {
  float m = 0.f;
  for (float v : x) m = std::max(m, std::fabs(v));
  return m;
}

TEST(KvScales, FirstPromptAmaxLandsAtTheRangeWithHeadroom) {
  for (float a : {1e-3f, 0.37f, 1.f, 5.5f, 300.f, 1e4f}) {
    const float k = kv_scale_from_amax(a, kKvScaleKeyRange);
    const float v = kv_scale_from_amax(a, kKvScaleValueRange);
    EXPECT_NEAR(a / k, 200.f, 200.f * 1e-6f) << a;
    EXPECT_NEAR(a / v, 100.f, 100.f * 1e-6f) << a;
    // Later tokens somewhat larger than the first prompt's still fit unsaturated.
    EXPECT_LT(2.2f * a / k, 448.f);
    EXPECT_LT(4.4f * a / v, 448.f);
    // ... and are stored unclipped (2.2x rounds to 448 itself, E4M3's neighbour of 440).
    EXPECT_LT(fp8_e4m3_bits_to_float(float_to_fp8_e4m3_bits(2.f * a / k)), 448.f);
    EXPECT_LT(fp8_e4m3_bits_to_float(float_to_fp8_e4m3_bits(4.f * a / v)), 448.f);
  }
}

TEST(KvScales, ZeroNanAndInfinityGivePositiveFiniteScales) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(kv_scale_from_amax(0.f, kKvScaleKeyRange), kMinKvScale);
  EXPECT_EQ(kv_scale_from_amax(nan, kKvScaleKeyRange), kMinKvScale);
  EXPECT_EQ(kv_scale_from_amax(inf, kKvScaleValueRange), kMaxKvScale);
  // The kernels divide by a scale and multiply by it: both stay finite at the bounds.
  EXPECT_TRUE(std::isfinite(1.f / kMinKvScale));
  EXPECT_TRUE(std::isfinite(448.f * kMaxKvScale));
  EXPECT_GT(1.f / kMaxKvScale, 0.f);
}

// The device folds per-block scales with an integer atomic max on their bits: that is the scale
// of the largest amax only if the function is nondecreasing and positive floats' bits order as
// their values.
TEST(KvScales, PerBlockMaximumIsTheScaleOfTheLargestAmax) {
  std::mt19937 rng(7);
  std::lognormal_distribution<float> magnitude(0.f, 4.f);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> amaxes(1 + trial % 37);
    for (float& a : amaxes) a = trial % 5 == 0 ? 0.f : magnitude(rng);
    int32_t folded = 0;  // the device buffer starts at 0
    for (float a : amaxes) {
      const float s = kv_scale_from_amax(a, kKvScaleKeyRange);
      int32_t bits = 0;
      std::memcpy(&bits, &s, 4);
      folded = std::max(folded, bits);
    }
    float got = 0.f;
    std::memcpy(&got, &folded, 4);
    EXPECT_EQ(
        got, kv_scale_from_amax(*std::max_element(amaxes.begin(), amaxes.end()), kKvScaleKeyRange));
  }
}

// Magnitudes like real checkpoints': Qwen2.5's K bias puts some channels in the hundreds (E4M3
// saturates at 448 with scale 1), and small V values fall below 2^-6, where scale 1 leaves only
// subnormal steps of 2^-9. Calculated scales bring both to E4M3's relative rounding (3 mantissa
// bits: at most 1/16 per value), the same error as values of magnitude ~1 with scale 1.
TEST(KvScales, CalculatedScalesFixMagnitudesOutsideE4M3sRange) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> k(8192), v(8192), unit(8192);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = 40.f * normal(rng) + (i % 64 == 3 ? 700.f : 0.f);  // an outlier channel
    v[i] = 0.004f * normal(rng);
    unit[i] = 1.3f * normal(rng);  // the test fixtures' K and V
  }
  const double k1 = fp8_relative_l2(k, 1.f), v1 = fp8_relative_l2(v, 1.f);
  const double u1 = fp8_relative_l2(unit, 1.f);
  const double kc = fp8_relative_l2(k, kv_scale_from_amax(amax(k), kKvScaleKeyRange));
  const double vc = fp8_relative_l2(v, kv_scale_from_amax(amax(v), kKvScaleValueRange));
  const double uc = fp8_relative_l2(unit, kv_scale_from_amax(amax(unit), kKvScaleKeyRange));
  std::printf(
      "[kv-scales] relative L2 of E4M3 storage, scale 1 -> calculated: K with a 700 "
      "channel %.2e -> %.2e, V of std 0.004 %.2e -> %.2e, values of std 1.3 %.2e -> "
      "%.2e\n",
      k1, kc, v1, vc, u1, uc);
  EXPECT_GT(k1, 0.2);  // saturation
  EXPECT_GT(v1, 0.1);  // subnormals
  EXPECT_LT(kc, 0.04);
  EXPECT_LT(vc, 0.04);
  // Values already inside E4M3's normal range gain nothing but the few below 2^-6.
  EXPECT_LT(uc, 0.04);
  EXPECT_LT(uc, u1 * 1.05);
}

// Why one scale per layer: heads of very different magnitudes (here 100x apart, more than real
// checkpoints' heads differ) store as finely with the layer's scale as with their own.
TEST(KvScales, PerLayerScaleRoundsSmallHeadsAsFinelyAsPerHeadScales) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> large(4096), small(4096), layer;
  for (float& x : large) x = 30.f * normal(rng);
  for (float& x : small) x = 0.3f * normal(rng);
  layer = large;
  layer.insert(layer.end(), small.begin(), small.end());
  const float layer_scale = kv_scale_from_amax(amax(layer), kKvScaleKeyRange);
  const double per_layer = fp8_relative_l2(small, layer_scale);
  const double per_head = fp8_relative_l2(small, kv_scale_from_amax(amax(small), kKvScaleKeyRange));
  std::printf(
      "[kv-scales] head 100x below the layer's largest: relative L2 %.3e with the layer's "
      "scale, %.3e with its own\n",
      per_layer, per_head);
  EXPECT_LT(per_layer, 1.1 * per_head);
}

}  // namespace
}  // namespace l2kv
