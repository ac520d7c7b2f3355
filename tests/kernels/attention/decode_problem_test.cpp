// The GPU attention tests' own machinery, on the CPU: the per-row error metric.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "gpu_test_support.h"

namespace l2kv {
namespace {

TEST(RowErrors, FindsTheWorstRowThatAWholeOutputNormHides) {
  // Row 0 is large and exact; row 1 is small and 5 % off; row 2 is 1 % off.
  const std::vector<float> ref = {100, -100, 100, -100, 1, 0, 0, 0, 0, 2, 0, 0};
  const std::vector<float> out = {100, -100, 100, -100, 1.05f, 0, 0, 0, 0, 2, 0.02f, 0};
  const auto s = testing::compare_rows(out, ref, 4);
  EXPECT_NEAR(s.worst_row_relative_l2, 0.05, 1e-6);
  EXPECT_EQ(s.worst_row, 1);
  EXPECT_NEAR(s.max_abs, 0.05, 1e-6);
  EXPECT_EQ(s.non_finite, 0);
  // The whole output's relative L2 (what the tests used before) is 2.5e-4: it would pass.
  double diff2 = 0, ref2 = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff2 += (out[i] - ref[i]) * (out[i] - ref[i]);
    ref2 += ref[i] * ref[i];
  }
  EXPECT_LT(std::sqrt(diff2 / ref2), testing::kFp16MaxRowRelativeL2);
}

TEST(RowErrors, CountsNonFiniteValuesAndMissingOnes) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> ref = {1, 1, 1, 1, 1, 1};
  auto s = testing::compare_rows({1, nan, 1, inf, 1, 1}, ref, 2);
  EXPECT_EQ(s.non_finite, 2);
  EXPECT_EQ(s.worst_row_relative_l2, 0);  // the finite values are exact
  s = testing::compare_rows({1, 1, 1, 1}, ref, 2);
  EXPECT_EQ(s.non_finite, 2);
  // A zero reference row is measured by its absolute error.
  s = testing::compare_rows({0, 0.3f, 1, 1}, {0, 0, 1, 1}, 2);
  EXPECT_NEAR(s.worst_row_relative_l2, 0.3, 1e-6);
  EXPECT_EQ(s.worst_row, 0);
}

TEST(RowErrors, RowsMatchAppliesEachDtypesBound) {
  EXPECT_DOUBLE_EQ(testing::max_row_relative_l2(DType::kBFloat16), testing::kBf16MaxRowRelativeL2);
  EXPECT_DOUBLE_EQ(testing::max_row_relative_l2(DType::kFloat16), testing::kFp16MaxRowRelativeL2);
  const std::vector<float> ref = {1, 0, 0, 0, 0, 1, 0, 0};
  std::vector<float> out = ref;
  out[5] = 1.003f;  // 3e-3 in row 1: inside bf16's bound, outside fp16's
  EXPECT_TRUE(testing::rows_match(out, ref, 4, 2, DType::kBFloat16, "bf16 case"));
  EXPECT_FALSE(testing::rows_match(out, ref, 4, 2, DType::kFloat16, "fp16 case"));
  out[5] = 1;
  out[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(testing::rows_match(out, ref, 4, 2, DType::kBFloat16, "nan"));
  EXPECT_FALSE(testing::rows_match({1, 0, 0, 0}, ref, 4, 2, DType::kBFloat16, "short"));
}

}  // namespace
}  // namespace l2kv
