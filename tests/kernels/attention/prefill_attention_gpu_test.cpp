// Prefill attention against the CPU reference: every prompt token is a query row attending to
// its own prefix of the paged cache (decode_attention_reference with one row per token).
// Whole prompts and chunks that start mid-sequence or at block and tile boundaries +-1, flat
// and peaked softmaxes, shuffled block tables, poison beyond each chunk's end in the cache,
// NaN-poisoned outputs; every (query row, head) checked on its own.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_reference.h"
#include "l2kv/kernels/attention/prefill_attention.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;
using testing::DeviceDecodeProblem;

constexpr int32_t kTileTokens = 64;  // the prefill kernel's K/V tile (kv_tile.cuh)

// New tokens [start, end) of one sequence; the cache holds its first `end` tokens.
struct ChunkSpan {
  int32_t start, end;
};

// The kernels a head_dim runs: both at 128 (wgmma by default, warp MMAs forced), warp MMAs at 64.
std::vector<PrefillKernel> kernels_for(int32_t head_dim) {
  if (head_dim == 128) return {PrefillKernel::kAuto, PrefillKernel::kWarpMma};
  return {PrefillKernel::kAuto};
}

// Runs prefill on one chunk per span (the sequence's length is the span's end) and checks each
// (query row, head) against the reference: every row is a decode of its own prefix. Query rows
// are uniform in +-q_scale, like the decode problem's. kAuto must choose wgmma for head_dim 128.
// `window` > 0: a sliding window (each row sees its last `window` positions). `wgmma_blocks` > 0:
// the wgmma kernel's persistent blocks, so each runs many items (0: one per SM).
void check_prefill(DecodeProblemConfig c, const std::vector<ChunkSpan>& spans,
                   const std::string& label, PrefillKernel kernel = PrefillKernel::kAuto,
                   int32_t window = 0, int32_t wgmma_blocks = 0) {
  c.seq_lens.clear();
  for (const ChunkSpan& span : spans) c.seq_lens.push_back(span.end);
  auto host = DecodeProblem::make(c);
  std::vector<PrefillChunk> chunks;
  int32_t rows = 0;
  for (int32_t s = 0; s < static_cast<int32_t>(spans.size()); ++s) {
    const int32_t count = spans[s].end - spans[s].start;
    chunks.push_back({s, rows, count, spans[s].start});
    rows += count;
  }
  // Query rows and the per-row view the reference takes.
  std::mt19937 rng(c.seed);
  std::uniform_real_distribution<float> uniform(-c.q_scale, c.q_scale);
  std::vector<uint16_t> q(static_cast<size_t>(rows) * c.num_q_heads * c.head_dim);
  for (auto& x : q) x = float_to_dtype_bits(c.dtype, uniform(rng));
  const testing::PrefillRows row_view = testing::prefill_rows(host, chunks);
  DecodeAttentionParams ref_params = row_view.reference_params(host.host_params(), q.data());
  ref_params.sliding_window = window;
  const auto reference = decode_attention_reference(ref_params);

  DeviceDecodeProblem device(host);
  void* d_q = nullptr;
  void* d_out = nullptr;
  L2KV_CUDA_CHECK(cudaMalloc(&d_q, q.size() * 2));
  L2KV_CUDA_CHECK(cudaMalloc(&d_out, q.size() * 2));
  L2KV_CUDA_CHECK(cudaMemcpy(d_q, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
  L2KV_CUDA_CHECK(cudaMemset(d_out, 0xff, q.size() * 2));  // NaN in fp16 and bf16
  PrefillAttention prefill;
  prefill.reserve(rows, static_cast<int32_t>(chunks.size()), c.num_kv_heads, c.num_q_heads);
  prefill.set_kernel(kernel);
  prefill.set_max_wgmma_blocks(wgmma_blocks);
  prefill.plan(device.params().kv, c.num_q_heads, chunks, nullptr);
  const PrefillKernel expected =
      kernel != PrefillKernel::kAuto
          ? kernel
          : (c.head_dim == 128 ? PrefillKernel::kWgmma : PrefillKernel::kWarpMma);
  EXPECT_EQ(prefill.planned_kernel(), expected) << label;
  prefill.run(d_q, d_out, device.params().kv, c.num_q_heads, ref_params.softmax_scale, nullptr,
              window);
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> bits(q.size());
  L2KV_CUDA_CHECK(cudaMemcpy(bits.data(), d_out, bits.size() * 2, cudaMemcpyDeviceToHost));
  cudaFree(d_q);
  cudaFree(d_out);
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = dtype_bits_to_float(c.dtype, bits[i]);
  EXPECT_TRUE(testing::rows_match(out, reference, c.head_dim, c.num_q_heads, c.dtype, label));
}

// Sliding windows (Gemma 3's local layers) on the warp-MMA kernel, head_dim 64, 128 and 256
// (without a window too: 1000 is past every prompt here): whole prompts and chunks that
// start deep in their sequence, windows of 1 token to longer than the prompts, so key tiles
// before a row's window are skipped or masked in part; the wgmma kernel refuses a window.
TEST(PrefillAttention, SlidingWindowMatchesReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const std::vector<ChunkSpan> spans = {{0, 333}, {150, 420}, {0, 65}, {500, 520}, {0, 1}};
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (const int32_t head_dim : {64, 128, 256}) {
      DecodeProblemConfig c = testing::two_kv_heads_config(dtype, head_dim, 4, 16, KvLayout::kHND);
      c.seed = 3000 + head_dim + (dtype == DType::kFloat16 ? 1 : 0);
      for (const int32_t window : {1, 16, 17, 64, 100, 1000}) {
        const std::string label = std::string(dtype_name(dtype)) + "/d" + std::to_string(head_dim) +
                                  "/window " + std::to_string(window);
        c.q_scale = DecodeProblemConfig{}.q_scale;
        check_prefill(c, spans, label + " flat", PrefillKernel::kWarpMma, window);
        c.q_scale = testing::kPeakedQScale;
        check_prefill(c, spans, label + " peaked", PrefillKernel::kWarpMma, window);
      }
    }
  // The wgmma kernel (head_dim 128, 16-bit cache) has no window.
  DecodeProblemConfig c =
      testing::two_kv_heads_config(DType::kBFloat16, 128, 4, 16, KvLayout::kHND);
  c.seq_lens = {64};
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  PrefillAttention prefill;
  prefill.reserve(64, 1, c.num_kv_heads, c.num_q_heads);
  const PrefillChunk chunk{0, 0, 64, 0};
  prefill.plan(device.params().kv, c.num_q_heads, std::span(&chunk, 1), nullptr);
  ASSERT_EQ(prefill.planned_kernel(), PrefillKernel::kWgmma);
  EXPECT_THROW(prefill.run(device.params().q, device.params().out, device.params().kv,
                           c.num_q_heads, 0.1f, nullptr, 16),
               Error);
}

using PrefillParam = std::tuple<DType, int32_t, int32_t, int32_t, KvLayout>;
class PrefillAttentionGrid : public ::testing::TestWithParam<PrefillParam> {};

TEST_P(PrefillAttentionGrid, MatchesReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim, group, block, layout] = GetParam();
  DecodeProblemConfig c = testing::two_kv_heads_config(dtype, head_dim, group, block, layout);
  c.seed = 1000 + group * 7 + head_dim + block;
  const std::vector<int32_t> lens =
      testing::quick_mode() ? std::vector<int32_t>{37, 70} : std::vector<int32_t>{1, 130, 333, 700};
  // Chunks: the whole of the first and third sequences, a random tail of the others.
  std::mt19937 rng(c.seed);
  std::vector<ChunkSpan> spans;
  for (int32_t s = 0; s < static_cast<int32_t>(lens.size()); ++s) {
    const int32_t count = s % 2 == 0 ? lens[s] : std::max(1, static_cast<int32_t>(rng() % lens[s]));
    spans.push_back({lens[s] - count, lens[s]});
  }
  for (const PrefillKernel kernel : kernels_for(head_dim)) {
    const std::string name = kernel == PrefillKernel::kWarpMma ? " warp-mma" : "";
    c.q_scale = DecodeProblemConfig{}.q_scale;
    check_prefill(c, spans, "flat" + name, kernel);
    c.q_scale = testing::kPeakedQScale;  // one key dominates each row: logit errors show
    check_prefill(c, spans, "peaked" + name, kernel);
  }
  // The wgmma kernel on fewer persistent blocks: two blocks over these spans, and one block over
  // prompts of up to eight 128-key tiles, so the K/V rings wrap within and across its items.
  if (head_dim == 128) {
    check_prefill(c, spans, "peaked, 2 blocks", PrefillKernel::kAuto, 0, 2);
    check_prefill(c, {{0, 700}, {450, 1000}}, "peaked, 1 block", PrefillKernel::kAuto, 0, 1);
  }
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
                                            ::testing::Values(16, 32, 64),
                                            ::testing::Values(KvLayout::kNHD, KvLayout::kHND)),
                         prefill_name);

using PrefillBoundaryParam = std::tuple<DType, int32_t /*head_dim*/, int32_t /*block*/, KvLayout>;
class PrefillAttentionBoundaries : public ::testing::TestWithParam<PrefillBoundaryParam> {};

// Chunks that start and end just before, on and just after block (16, 32, 64) and tile
// boundaries: query tiles start mid-tile, the last key tile ends partly filled, and the
// cache's poison lies right after each chunk's end where that is not a multiple of the block
// size (the chunk's last row attends to every cached token).
TEST_P(PrefillAttentionBoundaries, MatchesReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim, block, layout] = GetParam();
  DecodeProblemConfig c = testing::two_kv_heads_config(dtype, head_dim, 4, block, layout);
  c.seed = 2000 + head_dim + block + (layout == KvLayout::kHND ? 1 : 0);
  // Edges: 0, 1 and every multiple of 16 +-1, the boundaries of every block size and of the
  // tile. Each chunk runs from one edge to the next, the third or the sixth: chunks of one or
  // two tokens, part of a block, a whole block, across one and two tile boundaries.
  std::vector<int32_t> edges = {0, 1};
  for (int32_t b = 16; b <= (testing::quick_mode() ? 2 : 3) * kTileTokens; b += 16)
    edges.insert(edges.end(), {b - 1, b, b + 1});
  std::vector<ChunkSpan> spans;
  for (size_t step : {1, 3, 6})
    for (size_t i = 0; i + step < edges.size(); ++i) spans.push_back({edges[i], edges[i + step]});
  for (const PrefillKernel kernel : kernels_for(head_dim)) {
    const std::string name = kernel == PrefillKernel::kWarpMma ? " warp-mma" : "";
    c.q_scale = DecodeProblemConfig{}.q_scale;
    check_prefill(c, spans, "flat" + name, kernel);
    c.q_scale = testing::kPeakedQScale;
    check_prefill(c, spans, "peaked" + name, kernel);
  }
  // The wgmma kernel on three persistent blocks: each runs dozens of items of one or two
  // 128-key tiles, so its K/V rings wrap many times across items.
  if (head_dim == 128) check_prefill(c, spans, "peaked, 3 blocks", PrefillKernel::kAuto, 0, 3);
}

std::string prefill_boundary_name(const ::testing::TestParamInfo<PrefillBoundaryParam>& info) {
  const auto [dtype, head_dim, block, layout] = info.param;
  return std::string(dtype_name(dtype)) + "_d" + std::to_string(head_dim) + "_b" +
         std::to_string(block) + "_" + std::string(kv_layout_name(layout));
}

INSTANTIATE_TEST_SUITE_P(AllBlockSizes, PrefillAttentionBoundaries,
                         ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16),
                                            ::testing::Values(64, 128),
                                            ::testing::Values(16, 32, 64),
                                            ::testing::Values(KvLayout::kNHD, KvLayout::kHND)),
                         prefill_boundary_name);

TEST(PrefillAttention, RejectsBadPlans) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.seq_lens = {20};
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  PrefillAttention prefill;
  prefill.reserve(64, 4, c.num_kv_heads, c.num_q_heads);
  const std::vector<PrefillChunk> beyond = {{0, 0, 60, 0}};  // the table holds 3 blocks of 16
  EXPECT_THROW(prefill.plan(device.params().kv, 32, beyond, nullptr), Error);
  const std::vector<PrefillChunk> bad_seq = {{3, 0, 4, 0}};
  EXPECT_THROW(prefill.plan(device.params().kv, 32, bad_seq, nullptr), Error);
  const std::vector<PrefillChunk> ok = {{0, 0, 20, 0}};
  EXPECT_THROW(prefill.plan(device.params().kv, 30, ok, nullptr), Error);
  // The wgmma kernel serves head_dim 128 with a 16-bit cache only; forcing it elsewhere throws.
  DecodeProblemConfig small = c;
  small.head_dim = 64;
  auto host64 = DecodeProblem::make(small);
  DeviceDecodeProblem device64(host64);
  prefill.set_kernel(PrefillKernel::kWgmma);
  EXPECT_THROW(prefill.plan(device64.params().kv, 32, ok, nullptr), Error);
  prefill.set_kernel(PrefillKernel::kAuto);
  prefill.plan(device64.params().kv, 32, ok, nullptr);
  EXPECT_EQ(prefill.planned_kernel(), PrefillKernel::kWarpMma);
  // The kernels take row maxima of unscaled logits: a scale that is not positive is refused.
  const DecodeAttentionParams p64 = device64.params();
  for (const float scale : {0.f, -0.125f, std::nanf("")})
    EXPECT_THROW(prefill.run(p64.q, p64.out, p64.kv, p64.num_q_heads, scale, nullptr), Error);
}

// The work list is sized once, at start, for steps of up to N tokens over up to S sequences: a
// step within that plans and runs, a larger one throws (never a cudaFree/cudaMalloc inside a
// step) and leaves no plan for run() to launch.
TEST(PrefillAttention, WorkListSizedAtStartRefusesLargerSteps) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.seq_lens = {300, 40};
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  PrefillAttention prefill;
  prefill.reserve(64, 2, c.num_kv_heads, c.num_q_heads);
  const std::vector<PrefillChunk> within = {{0, 0, 24, 0}, {1, 24, 40, 0}};  // 64 tokens
  EXPECT_NO_THROW(prefill.plan(device.params().kv, c.num_q_heads, within, nullptr));
  const std::vector<PrefillChunk> beyond = {{0, 0, 300, 0}};  // 300 tokens
  EXPECT_THROW(prefill.plan(device.params().kv, c.num_q_heads, beyond, nullptr), Error);
  EXPECT_THROW(prefill.run(device.params().q, device.params().out, device.params().kv,
                           c.num_q_heads, 0.1f, nullptr),
               Error);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace l2kv
