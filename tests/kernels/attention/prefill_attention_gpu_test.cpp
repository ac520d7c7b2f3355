// Prefill attention against the CPU reference: every prompt token is a query row attending to
// its own prefix of the paged cache (decode_attention_reference with one row per token).
// Whole prompts and chunks that start mid-sequence, shuffled block tables, poisoned outputs;
// every (query row, head) checked on its own.
#include <gtest/gtest.h>

#include <random>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_reference.h"
#include "l2kv/kernels/attention/prefill_attention.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;
using testing::DeviceDecodeProblem;

using PrefillParam = std::tuple<DType, int32_t, int32_t, int32_t, KvLayout>;
class PrefillAttentionGrid : public ::testing::TestWithParam<PrefillParam> {};

TEST_P(PrefillAttentionGrid, MatchesReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim, group, block, layout] = GetParam();
  DecodeProblemConfig c;
  c.dtype = dtype;
  c.head_dim = head_dim;
  c.num_kv_heads = 2;
  c.num_q_heads = 2 * group;
  c.block_size = block;
  c.layout = layout;
  c.seed = 1000 + group * 7 + head_dim + block;
  c.seq_lens =
      testing::quick_mode() ? std::vector<int32_t>{37, 70} : std::vector<int32_t>{1, 130, 333, 700};
  auto host = DecodeProblem::make(c);
  // Chunks: the whole of the first and third sequences, a tail of the others.
  std::mt19937 rng(c.seed);
  std::vector<PrefillChunk> chunks;
  int32_t rows = 0;
  for (int32_t s = 0; s < static_cast<int32_t>(c.seq_lens.size()); ++s) {
    const int32_t len = c.seq_lens[s];
    const int32_t count = s % 2 == 0 ? len : std::max(1, static_cast<int32_t>(rng() % len));
    chunks.push_back({s, rows, count, len - count});
    rows += count;
  }
  // Query rows and the per-row view the reference takes.
  std::uniform_real_distribution<float> uniform(-2.f, 2.f);
  std::vector<uint16_t> q(static_cast<size_t>(rows) * c.num_q_heads * head_dim);
  for (auto& x : q) x = float_to_dtype_bits(dtype, uniform(rng));
  std::vector<int32_t> row_table, row_lens;
  for (const auto& ch : chunks)
    for (int32_t i = 0; i < ch.num_tokens; ++i) {
      row_table.insert(
          row_table.end(),
          host.block_table.begin() + static_cast<int64_t>(ch.seq) * host.max_blocks_per_seq,
          host.block_table.begin() + static_cast<int64_t>(ch.seq + 1) * host.max_blocks_per_seq);
      row_lens.push_back(ch.first_position + i + 1);
    }
  DecodeAttentionParams ref_params = host.host_params();
  ref_params.q = q.data();
  ref_params.kv.block_table = row_table.data();
  ref_params.kv.seq_lens = row_lens.data();
  ref_params.kv.batch_size = rows;
  ref_params.max_seq_len = *std::max_element(row_lens.begin(), row_lens.end());
  const auto reference = decode_attention_reference(ref_params);

  DeviceDecodeProblem device(host);
  void* d_q = nullptr;
  void* d_out = nullptr;
  L2KV_CUDA_CHECK(cudaMalloc(&d_q, q.size() * 2));
  L2KV_CUDA_CHECK(cudaMalloc(&d_out, q.size() * 2));
  L2KV_CUDA_CHECK(cudaMemcpy(d_q, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  L2KV_CUDA_CHECK(cudaMemset(d_out, 0xff, q.size() * 2));
  PrefillAttention prefill;
  prefill.plan(device.params().kv, c.num_q_heads, chunks, nullptr);
  prefill.run(d_q, d_out, device.params().kv, c.num_q_heads, ref_params.softmax_scale, nullptr);
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> bits(q.size());
  L2KV_CUDA_CHECK(cudaMemcpy(bits.data(), d_out, bits.size() * 2, cudaMemcpyDeviceToHost));
  cudaFree(d_q);
  cudaFree(d_out);
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = dtype_bits_to_float(dtype, bits[i]);
  EXPECT_TRUE(testing::rows_match(out, reference, head_dim, c.num_q_heads, dtype, "flat"));
}

std::string prefill_name(const ::testing::TestParamInfo<PrefillParam>& info) {
  const auto [dtype, head_dim, group, block, layout] = info.param;
  return std::string(dtype_name(dtype)) + "_d" + std::to_string(head_dim) + "_g" +
         std::to_string(group) + "_b" + std::to_string(block) + "_" +
         std::string(kv_layout_name(layout));
}

INSTANTIATE_TEST_SUITE_P(AllShapes, PrefillAttentionGrid,
                         ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16),
                                            ::testing::Values(64, 128),
                                            ::testing::Values(1, 2, 3, 4, 7, 8),
                                            ::testing::Values(16, 64),
                                            ::testing::Values(KvLayout::kNHD, KvLayout::kHND)),
                         prefill_name);

TEST(PrefillAttention, RejectsBadPlans) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.seq_lens = {20};
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  PrefillAttention prefill;
  const std::vector<PrefillChunk> beyond = {{0, 0, 60, 0}};  // the table holds 3 blocks of 16
  EXPECT_THROW(prefill.plan(device.params().kv, 32, beyond, nullptr), Error);
  const std::vector<PrefillChunk> bad_seq = {{3, 0, 4, 0}};
  EXPECT_THROW(prefill.plan(device.params().kv, 32, bad_seq, nullptr), Error);
  const std::vector<PrefillChunk> ok = {{0, 0, 20, 0}};
  EXPECT_THROW(prefill.plan(device.params().kv, 30, ok, nullptr), Error);
}

}  // namespace
}  // namespace l2kv
