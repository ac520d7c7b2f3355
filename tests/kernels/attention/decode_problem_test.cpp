// The GPU attention tests' own machinery, on the CPU: the per-row error metric, the poison and
// needles DecodeProblem plants, and that a kernel with a typical bug (one token too many or too
// few, a dropped needle, logits scaled by 1 %) would exceed the bounds (simulated with the
// reference on altered parameters).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_reference.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;

// Lengths at every block size's (16, 32, 64) boundaries +-1: with block 16, 17 and 33 leave 15
// poison slots, 15 and 31 leave one; 16, 32 and 64 leave none.
const std::vector<int32_t> kBoundaryLengths = {1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129};

DecodeProblemConfig small_config(int32_t block_size, KvLayout layout, DType dtype) {
  DecodeProblemConfig c;
  c.dtype = dtype;
  c.layout = layout;
  c.head_dim = 64;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;  // group 4: the planted keys must serve four query heads
  c.block_size = block_size;
  c.seq_lens = kBoundaryLengths;
  c.seed = 7 + block_size;
  return c;
}

std::vector<float> dtype_values(DType dtype, const uint16_t* bits, int32_t n) {
  std::vector<float> v(n);
  for (int32_t i = 0; i < n; ++i) v[i] = dtype_bits_to_float(dtype, bits[i]);
  return v;
}

// Logit of the K row at `offset` for query head `head` of sequence `seq`, and the largest
// error K's rounding to the dtype can have put into it (unit roundoff times sum |q k|).
struct Logit {
  double value, rounding_bound;
};
Logit logit_of(DecodeProblem& p, int32_t seq, int32_t head, int64_t offset) {
  const DecodeProblemConfig& c = p.config;
  const auto params = p.host_params();
  const double roundoff = c.dtype == DType::kFloat16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  double dot = 0, magnitude = 0;
  for (int32_t i = 0; i < c.head_dim; ++i) {
    const double q = dtype_bits_to_float(
        c.dtype, p.q[(static_cast<int64_t>(seq) * c.num_q_heads + head) * c.head_dim + i]);
    const double k = dtype_bits_to_float(c.dtype, p.k_pool[offset + i]);
    dot += q * k;
    magnitude += std::abs(q * k);
  }
  return {dot * params.softmax_scale, roundoff * magnitude * params.softmax_scale};
}

// Relative L2 error of every row (compare_rows on one row at a time).
std::vector<double> row_errors(const std::vector<float>& out, const std::vector<float>& ref,
                               int32_t row_len) {
  std::vector<double> errors;
  for (size_t begin = 0; begin < ref.size(); begin += row_len) {
    const std::vector<float> o(out.begin() + begin, out.begin() + begin + row_len);
    const std::vector<float> r(ref.begin() + begin, ref.begin() + begin + row_len);
    errors.push_back(testing::compare_rows(o, r, row_len).worst_row_relative_l2);
  }
  return errors;
}

std::vector<float> round_to(DType dtype, const std::vector<float>& values) {
  std::vector<float> out(values.size());
  for (size_t i = 0; i < values.size(); ++i)
    out[i] = dtype_bits_to_float(dtype, float_to_dtype_bits(dtype, values[i]));
  return out;
}

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

TEST(RowErrors, RoundingTheReferenceToTheDtypeStaysWithinTheBound) {
  // The kernels' outputs are rounded to the dtype: rounding alone must leave room in the bound.
  for (DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (float q_scale : {2.f, testing::kPeakedQScale}) {
      auto c = small_config(16, KvLayout::kHND, dtype);
      c.q_scale = q_scale;
      auto p = DecodeProblem::make(c);
      const auto ref = decode_attention_reference(p.host_params());
      const auto s = testing::compare_rows(round_to(dtype, ref), ref, c.head_dim);
      EXPECT_LT(s.worst_row_relative_l2, testing::max_row_relative_l2(dtype) / 2)
          << dtype_name(dtype) << " q_scale " << q_scale;
    }
}

TEST(KeyWithDot, GivesEveryRowTheTargetDot) {
  std::mt19937_64 rng(3);
  std::uniform_real_distribution<double> uniform(-2, 2);
  for (int rows : {1, 4, 7, 8}) {
    std::vector<std::vector<double>> q(rows, std::vector<double>(64));
    for (auto& row : q)
      for (auto& x : row) x = uniform(rng);
    const auto k = testing::key_with_dot(q, 123.5);
    for (const auto& row : q)
      EXPECT_NEAR(std::inner_product(row.begin(), row.end(), k.begin(), 0.0), 123.5, 1e-9);
  }
  std::vector<std::vector<double>> dependent(2, std::vector<double>(64, 1.0));
  EXPECT_THROW(testing::key_with_dot(dependent, 1.0), std::invalid_argument);
}

TEST(DecodeProblemPlanting, PoisonFillsExactlyTheSlotsNoSequenceMayRead) {
  for (int32_t block : {16, 32, 64})
    for (KvLayout layout : {KvLayout::kNHD, KvLayout::kHND})
      for (DType dtype : {DType::kBFloat16, DType::kFloat16}) {
        SCOPED_TRACE(std::to_string(block) + " " + std::string(kv_layout_name(layout)) + " " +
                     std::string(dtype_name(dtype)));
        auto c = small_config(block, layout, dtype);
        auto p = DecodeProblem::make(c);
        c.poison_unread_slots = false;
        const auto plain = DecodeProblem::make(c);
        const int32_t group = c.num_q_heads / c.num_kv_heads;
        // Every block is either some sequence's or unused, exactly once.
        std::multiset<int32_t> blocks(p.unused_blocks.begin(), p.unused_blocks.end());
        for (int32_t id : p.block_table)
          if (id >= 0) blocks.insert(id);
        ASSERT_EQ(static_cast<int32_t>(blocks.size()), p.num_blocks);
        ASSERT_EQ(static_cast<int32_t>(std::set<int32_t>(blocks.begin(), blocks.end()).size()),
                  p.num_blocks);
        EXPECT_EQ(static_cast<int32_t>(p.unused_blocks.size()), c.spare_blocks);

        auto is_poison = [&](int64_t offset, int32_t seq, int32_t kv_head) {
          for (float v : dtype_values(dtype, p.v_pool.data() + offset, c.head_dim))
            if (v != testing::kPoisonValue) return false;
          for (int32_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
            const Logit l = logit_of(p, seq, h, offset);
            if (std::abs(l.value - p.poison_logit()) > l.rounding_bound) return false;
          }
          return true;
        };
        for (int32_t s = 0; s < static_cast<int32_t>(c.seq_lens.size()); ++s) {
          const int32_t len = c.seq_lens[s];
          const int32_t end = (len + block - 1) / block * block;
          for (int32_t t = 0; t < end; ++t)
            for (int32_t h = 0; h < c.num_kv_heads; ++h) {
              const int64_t offset = p.token_offset(s, t, h);
              if (t >= len) {
                EXPECT_TRUE(is_poison(offset, s, h)) << "sequence " << s << " slot " << t;
                continue;
              }
              // Tokens below the length keep their random values.
              EXPECT_TRUE(std::equal(p.k_pool.begin() + offset,
                                     p.k_pool.begin() + offset + c.head_dim,
                                     plain.k_pool.begin() + offset));
              EXPECT_TRUE(std::equal(p.v_pool.begin() + offset,
                                     p.v_pool.begin() + offset + c.head_dim,
                                     plain.v_pool.begin() + offset));
            }
        }
        // Slot i of the unused blocks dominates sequence i % batch.
        int32_t slot_index = 0;
        for (int32_t id : p.unused_blocks)
          for (int32_t slot = 0; slot < block; ++slot, ++slot_index)
            for (int32_t h = 0; h < c.num_kv_heads; ++h)
              EXPECT_TRUE(is_poison(p.slot_offset(id, slot, h),
                                    slot_index % static_cast<int32_t>(c.seq_lens.size()), h))
                  << "unused block " << id << " slot " << slot;
        // The reference never reads poison.
        EXPECT_EQ(decode_attention_reference(p.host_params()),
                  decode_attention_reference(DecodeProblem(plain).host_params()));
      }
}

TEST(DecodeProblemPlanting, NeedlesLandWhereAskedAndDominate) {
  for (float q_scale : {2.f, testing::kPeakedQScale}) {
    auto c = small_config(32, KvLayout::kNHD, DType::kBFloat16);
    c.q_scale = q_scale;
    c.needle_positions = {0, 64, -1, 1000, -1};  // 1000 lies beyond every sequence
    auto p = DecodeProblem::make(c);
    const int32_t group = c.num_q_heads / c.num_kv_heads;
    for (int32_t s = 0; s < static_cast<int32_t>(c.seq_lens.size()); ++s) {
      const int32_t len = c.seq_lens[s];
      std::vector<int32_t> expected = {0};
      if (len > 64) expected.push_back(64);
      if (len - 1 != 0 && len - 1 != 64) expected.push_back(len - 1);
      ASSERT_EQ(p.needles_of(s), expected) << "sequence " << s;
      for (int32_t h = 0; h < c.num_q_heads; ++h) {
        const int32_t kv_head = h / group;
        // Needles carry the needle logit and a V beyond the random values' [-1, 1).
        double needle_weight = 0, total_weight = 0;
        for (int32_t t = 0; t < len; ++t) {
          const int64_t offset = p.token_offset(s, t, kv_head);
          const Logit l = logit_of(p, s, h, offset);
          const bool needle = std::ranges::find(expected, t) != expected.end();
          if (needle) {
            EXPECT_NEAR(l.value, p.needle_logit(), l.rounding_bound) << "token " << t;
            const auto v = dtype_values(c.dtype, p.v_pool.data() + offset, c.head_dim);
            double largest = 0;
            for (float x : v) largest = std::max(largest, std::abs(static_cast<double>(x)));
            EXPECT_GT(largest, 1.0) << "token " << t;
          }
          const double w = std::exp(l.value - p.needle_logit());
          total_weight += w;
          if (needle) needle_weight += w;
        }
        EXPECT_GT(needle_weight / total_weight, 0.95) << "sequence " << s << " head " << h;
      }
    }
  }
}

TEST(DecodeProblemPlanting, WrongKernelsExceedTheBounds) {
  // Each "wrong kernel" is the reference on altered parameters. Its worst row must exceed the
  // tightest bound with room to spare, or the GPU tests could not catch that bug.
  const double bound = testing::kBf16MaxRowRelativeL2;
  for (int32_t block : {16, 64}) {
    auto c = small_config(block, KvLayout::kHND, DType::kBFloat16);
    c.needle_positions = {0, 64, -1};
    auto p = DecodeProblem::make(c);
    auto params = p.host_params();
    const auto ref = decode_attention_reference(params);

    // Reads one token past the end, where the last block has a slot beyond the length.
    std::vector<int32_t> lens = c.seq_lens;
    for (int32_t& len : lens)
      if (len % block != 0) ++len;
    auto mutant = params;
    mutant.kv.seq_lens = lens.data();
    mutant.max_seq_len = *std::ranges::max_element(lens);
    auto errors = row_errors(decode_attention_reference(mutant), ref, c.head_dim);
    for (size_t row = 0; row < errors.size(); ++row)
      if (c.seq_lens[row / c.num_q_heads] % block != 0) {
        EXPECT_GT(errors[row], 100 * bound) << "reads past the end, row " << row;
      }

    // Drops the last token (a needle): every sequence longer than one token is off.
    lens = c.seq_lens;
    for (int32_t& len : lens) len = std::max(1, len - 1);
    mutant = params;
    mutant.kv.seq_lens = lens.data();
    mutant.max_seq_len = *std::ranges::max_element(lens);
    errors = row_errors(decode_attention_reference(mutant), ref, c.head_dim);
    for (size_t row = 0; row < errors.size(); ++row)
      if (c.seq_lens[row / c.num_q_heads] > 1) {
        EXPECT_GT(errors[row], 10 * bound) << "drops the last token, row " << row;
      }

    // Drops the first token, or the first of the second tile: the needle there loses its logit.
    for (int32_t dropped : {0, 64}) {
      auto altered = p;
      for (int32_t s = 0; s < static_cast<int32_t>(c.seq_lens.size()); ++s)
        if (dropped < c.seq_lens[s] - 1)
          for (int32_t h = 0; h < c.num_kv_heads; ++h) {
            const int64_t offset = altered.token_offset(s, dropped, h);
            std::fill_n(altered.k_pool.begin() + offset, c.head_dim, uint16_t{0});
          }
      errors = row_errors(decode_attention_reference(altered.host_params()), ref, c.head_dim);
      for (size_t row = 0; row < errors.size(); ++row)
        if (dropped < c.seq_lens[row / c.num_q_heads] - 1) {
          EXPECT_GT(errors[row], 10 * bound) << "drops token " << dropped << ", row " << row;
        }
    }
  }

  // Scales every logit by 1.01: visible once a few tokens dominate (q_scale kPeakedQScale).
  auto c = small_config(16, KvLayout::kNHD, DType::kBFloat16);
  c.q_scale = testing::kPeakedQScale;
  c.seq_lens = {100, 300, 700, 2000};
  auto p = DecodeProblem::make(c);
  auto mutant = p.host_params();
  const auto ref = decode_attention_reference(mutant);
  mutant.softmax_scale *= 1.01f;
  const auto s = testing::compare_rows(decode_attention_reference(mutant), ref, c.head_dim);
  EXPECT_GT(s.worst_row_relative_l2, 1.5 * bound);  // 1.05e-2 here
}

}  // namespace
}  // namespace l2kv
