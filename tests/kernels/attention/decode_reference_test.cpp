#include "l2kv/kernels/attention/decode_reference.h"

#include <gtest/gtest.h>

#include <cmath>

#include "gpu_test_support.h"
#include "l2kv/core/error.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;

DecodeProblemConfig small_config(KvLayout layout, DType dtype = DType::kBFloat16) {
  DecodeProblemConfig c;
  c.dtype = dtype;
  c.layout = layout;
  c.head_dim = 64;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.block_size = 16;
  c.seq_lens = {1, 17, 40};
  return c;
}

float k_value(DecodeProblem& p, int seq, int token, int kv_head, int dim) {
  auto params = p.host_params();
  const int32_t physical = p.block_table[seq * p.max_blocks_per_seq + token / p.config.block_size];
  return dtype_bits_to_float(
      p.config.dtype,
      p.k_pool[params.kv.offset(physical, token % p.config.block_size, kv_head) + dim]);
}

TEST(DecodeReference, SingleTokenReturnsItsValueRow) {
  auto problem = DecodeProblem::make(small_config(KvLayout::kNHD));
  auto params = problem.host_params();
  const auto out = decode_attention_reference(params);
  const int32_t physical = problem.block_table[0];
  for (int head = 0; head < 8; ++head)
    for (int d = 0; d < 64; ++d) {
      const float v =
          bf16_bits_to_float(problem.v_pool[params.kv.offset(physical, 0, head / 4) + d]);
      EXPECT_FLOAT_EQ(out[head * 64 + d], v);
    }
}

TEST(DecodeReference, EqualKeysAverageTheValues) {
  auto problem = DecodeProblem::make(small_config(KvLayout::kHND));
  std::fill(problem.k_pool.begin(), problem.k_pool.end(), float_to_bf16_bits(0.5f));
  auto params = problem.host_params();
  const auto out = decode_attention_reference(params);
  const int seq = 2, len = 40, head = 5, kv_head = 1;
  for (int d = 0; d < 64; ++d) {
    double mean = 0;
    for (int t = 0; t < len; ++t) {
      const int32_t physical = problem.block_table[seq * problem.max_blocks_per_seq + t / 16];
      mean += bf16_bits_to_float(problem.v_pool[params.kv.offset(physical, t % 16, kv_head) + d]);
    }
    EXPECT_NEAR(out[(seq * 8 + head) * 64 + d], mean / len, 1e-6);
  }
}

TEST(DecodeReference, MatchesDirectSoftmaxOfOneHead) {
  auto problem = DecodeProblem::make(small_config(KvLayout::kHND, DType::kFloat16));
  auto params = problem.host_params();
  const auto out = decode_attention_reference(params);
  const int seq = 1, len = 17, head = 3, kv_head = 0;
  std::vector<double> w(len);
  double max_w = -1e30, sum = 0;
  for (int t = 0; t < len; ++t) {
    double dot = 0;
    for (int d = 0; d < 64; ++d)
      dot += fp16_bits_to_float(problem.q[(seq * 8 + head) * 64 + d]) *
             k_value(problem, seq, t, kv_head, d);
    w[t] = dot / 8.0;  // 1/sqrt(64)
    max_w = std::max(max_w, w[t]);
  }
  for (auto& x : w) sum += (x = std::exp(x - max_w));
  for (int d = 0; d < 64; ++d) {
    double o = 0;
    for (int t = 0; t < len; ++t) {
      const int32_t physical = problem.block_table[seq * problem.max_blocks_per_seq + t / 16];
      o += w[t] / sum *
           fp16_bits_to_float(problem.v_pool[params.kv.offset(physical, t % 16, kv_head) + d]);
    }
    EXPECT_NEAR(out[(seq * 8 + head) * 64 + d], o, 1e-6);
  }
}

TEST(DecodeReference, LayoutDoesNotChangeTheResult) {
  // Copy the same logical K/V into an NHD and an HND pool and compare outputs.
  auto hnd = DecodeProblem::make(small_config(KvLayout::kHND));
  auto nhd = hnd;
  nhd.config.layout = KvLayout::kNHD;
  auto hp = hnd.host_params();
  auto np = nhd.host_params();
  for (int32_t b = 0; b < hnd.num_blocks; ++b)
    for (int t = 0; t < 16; ++t)
      for (int h = 0; h < 2; ++h)
        for (int d = 0; d < 64; ++d) {
          nhd.k_pool[np.kv.offset(b, t, h) + d] = hnd.k_pool[hp.kv.offset(b, t, h) + d];
          nhd.v_pool[np.kv.offset(b, t, h) + d] = hnd.v_pool[hp.kv.offset(b, t, h) + d];
        }
  EXPECT_EQ(decode_attention_reference(hnd.host_params()),
            decode_attention_reference(nhd.host_params()));
}

TEST(DecodeReference, RejectsInvalidShapes) {
  auto problem = DecodeProblem::make(small_config(KvLayout::kHND));
  auto params = problem.host_params();
  params.num_q_heads = 7;  // not a multiple of 2 KV heads
  EXPECT_THROW(decode_attention_reference(params), Error);
  params = problem.host_params();
  params.num_q_heads = 2 * 9;  // 9 per KV head
  EXPECT_THROW(decode_attention_reference(params), Error);
  params = problem.host_params();
  params.kv.head_dim = 96;
  EXPECT_THROW(decode_attention_reference(params), Error);
  params = problem.host_params();
  params.max_seq_len = 12;
  EXPECT_THROW(decode_attention_reference(params), Error);
}

TEST(DType, ConversionsRoundToNearestEven) {
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(bf16_bits_to_float(float_to_bf16_bits(-2.5f)), -2.5f);
  EXPECT_EQ(float_to_bf16_bits(1.0f + 1.0f / 256), 0x3f80);  // tie rounds to even
  EXPECT_EQ(float_to_fp16_bits(1.0f), 0x3c00);
  EXPECT_EQ(float_to_fp16_bits(65504.f), 0x7bff);
  EXPECT_EQ(float_to_fp16_bits(1e6f), 0x7c00);
  EXPECT_EQ(float_to_fp16_bits(1.0f + 1.0f / 2048), 0x3c00);     // tie rounds to even
  EXPECT_EQ(fp16_bits_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(float_to_fp16_bits(std::ldexp(1.0f, -24)), 0x0001);
  for (float x : {0.1f, -3.75f, 1234.5f, 6.1e-5f, -0.0f})
    EXPECT_NEAR(fp16_bits_to_float(float_to_fp16_bits(x)), x, std::abs(x) * 1e-3 + 1e-7);
}

}  // namespace
}  // namespace l2kv
