// The QKV projection's RoPE-pair row order (rope_pair_rows.h), on the host: the map is a
// permutation of each head's rows that puts the pair (i, i + head_dim / 2) 8 rows apart in one
// 16-row tile, and the load-time reordering moves whole rows (weights) and single values (bias).
#include "l2kv/kernels/model/rope_pair_rows.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

namespace l2kv {
namespace {

TEST(RopePairRows, EachHeadsRowsArePermutedSoPairsShareATile) {
  for (const int32_t d : {16, 64, 128}) {
    std::set<int32_t> rows;
    for (int32_t f = 0; f < d; ++f) {
      const int32_t r = rope_pair_row(f, d);
      ASSERT_GE(r, 0);
      ASSERT_LT(r, d);
      rows.insert(r);
    }
    EXPECT_EQ(rows.size(), static_cast<size_t>(d)) << "head_dim " << d << ": not a permutation";
    for (int32_t i = 0; i < d / 2; ++i) {
      const int32_t a = rope_pair_row(i, d), b = rope_pair_row(i + d / 2, d);
      EXPECT_EQ(b, a + 8) << "head_dim " << d << " pair " << i;
      EXPECT_LT(a % 16, 8) << "head_dim " << d << " pair " << i << " not a tile's first half";
    }
  }
  // Spelled out for head_dim 64: tile 1 holds features 8-15 and 40-47.
  EXPECT_EQ(rope_pair_row(8, 64), 16);
  EXPECT_EQ(rope_pair_row(15, 64), 23);
  EXPECT_EQ(rope_pair_row(40, 64), 24);
  EXPECT_EQ(rope_pair_row(47, 64), 31);
  EXPECT_EQ(rope_pair_row(63, 64), 63);
}

TEST(RopePairRows, ReordersWholeRowsOfEveryHead) {
  const int64_t d = 32, width = 3, heads = 3;  // 16 would be the identity
  std::vector<int32_t> m(static_cast<size_t>(heads * d * width));
  std::iota(m.begin(), m.end(), 0);  // element (row, k) = row * width + k
  const std::vector<int32_t> out = to_rope_pair_rows(m, d, width);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t f = 0; f < d; ++f)
      for (int64_t k = 0; k < width; ++k) {
        const int64_t row = h * d + rope_pair_row(static_cast<int32_t>(f), static_cast<int32_t>(d));
        EXPECT_EQ(out[row * width + k], (h * d + f) * width + k);
      }
  // A bias (width 1) of two heads of 32: head 1's feature 16 (pair 0's second) moves to its
  // row 8, feature 8 to row 16.
  std::vector<float> bias(static_cast<size_t>(2 * d));
  std::iota(bias.begin(), bias.end(), 0.f);
  const std::vector<float> paired = to_rope_pair_rows(bias, d, 1);
  EXPECT_EQ(paired[d + 8], static_cast<float>(d + 16));
  EXPECT_EQ(paired[d + 16], static_cast<float>(d + 8));
  EXPECT_EQ(paired[d + 1], static_cast<float>(d + 1));
}

}  // namespace
}  // namespace l2kv
