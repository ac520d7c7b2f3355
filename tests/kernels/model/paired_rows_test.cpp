// The paired row order of the QKV and gate_up projections (paired_rows.h), on the host: the map is
// a permutation of each group's rows that puts features f and f + group / 2 8 rows apart in one
// 16-row tile, paired_feature inverts it, and the load-time reordering moves whole rows
// (weights) and single values (biases, scales) as gemv.h's epilogues expect them.
#include "l2kv/kernels/model/paired_rows.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

TEST(PairedRows, EachGroupsRowsArePermutedSoPairsShareATile) {
  for (const int64_t group : {16, 64, 128, 2 * 14336}) {
    std::set<int64_t> rows;
    for (int64_t f = 0; f < group; ++f) {
      const int64_t r = paired_row(f, group);
      ASSERT_GE(r, 0);
      ASSERT_LT(r, group);
      rows.insert(r);
    }
    EXPECT_EQ(rows.size(), static_cast<size_t>(group))
        << "group " << group << ": not a permutation";
    for (int64_t i = 0; i < group / 2; ++i) {
      const int64_t a = paired_row(i, group), b = paired_row(i + group / 2, group);
      EXPECT_EQ(b, a + 8) << "group " << group << " pair " << i;
      EXPECT_LT(a % 16, 8) << "group " << group << " pair " << i << " not a tile's first half";
      EXPECT_EQ(paired_feature(a), i) << "group " << group << " row " << a;
    }
  }
  // Spelled out for a head of 64: tile 1 holds features 8-15 and 40-47.
  EXPECT_EQ(paired_row(8, 64), 16);
  EXPECT_EQ(paired_row(15, 64), 23);
  EXPECT_EQ(paired_row(40, 64), 24);
  EXPECT_EQ(paired_row(47, 64), 31);
  EXPECT_EQ(paired_row(63, 64), 63);
}

TEST(PairedRows, ReordersWholeRowsOfEveryGroup) {
  const int64_t group = 32, width = 3, groups = 3;  // 16 would be the identity
  std::vector<int32_t> m(static_cast<size_t>(groups * group * width));
  std::iota(m.begin(), m.end(), 0);  // element (row, k) = row * width + k
  const std::vector<int32_t> out = to_paired_rows(m, group, width);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t f = 0; f < group; ++f)
      for (int64_t k = 0; k < width; ++k)
        EXPECT_EQ(out[(g * group + paired_row(f, group)) * width + k], (g * group + f) * width + k);
  // A bias (width 1) of two heads of 32: head 1's feature 16 (pair 0's second) moves to its
  // row 8, feature 8 to row 16.
  std::vector<float> bias(static_cast<size_t>(2 * group));
  std::iota(bias.begin(), bias.end(), 0.f);
  const std::vector<float> paired = to_paired_rows(bias, group, 1);
  EXPECT_EQ(paired[group + 8], static_cast<float>(group + 16));
  EXPECT_EQ(paired[group + 16], static_cast<float>(group + 8));
  EXPECT_EQ(paired[group + 1], static_cast<float>(group + 1));
  EXPECT_THROW(to_paired_rows(bias, 24, 1), Error) << "a group that is not a multiple of 16";
  EXPECT_THROW(to_paired_rows(bias, 48, 1), Error) << "groups that do not tile the rows";
}

// gate_up as one group of [gate | up] is gemv.h's kSiluMul layout: rows 16 j .. 16 j + 7 are
// gate features 8 j .. 8 j + 7, the next 8 rows the same up features.
TEST(PairedRows, GateUpAsOneGroupIsTheSiluEpiloguesLayout) {
  const int64_t inter = 40;
  for (int64_t f = 0; f < inter; ++f) {
    EXPECT_EQ(paired_row(f, 2 * inter), f / 8 * 16 + f % 8) << "gate " << f;
    EXPECT_EQ(paired_row(inter + f, 2 * inter), f / 8 * 16 + 8 + f % 8) << "up " << f;
  }
}

}  // namespace
}  // namespace l2kv
