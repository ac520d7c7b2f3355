// Every decode kernel and prefetch policy against the CPU reference on fresh random inputs:
// ragged lengths, shuffled block tables, both dtypes, both head dims, GQA 1..8, block sizes
// 16/32/64, both layouts; flat and peaked softmaxes; lengths at block and tile boundaries +-1
// up to 32K; poison in every slot no kernel may read and needles at the first, last and
// boundary tokens; outputs poisoned with NaN first, then checked row by row.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_reference.h"
#include "l2kv/kernels/attention/split_decode.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;
using testing::DeviceDecodeProblem;

constexpr int32_t kTileTokens = 64;  // split decode's K/V tile (kv_tile.cuh)

struct Variant {
  const char* name;
  bool split;
  PrefetchPolicy policy;
};

std::vector<Variant> all_variants() {
  return {{"paged_v1", false, PrefetchPolicy::off()},
          {"paged_v1+prefetch", false, PrefetchPolicy::fixed(1)},
          {"paged_v1+prefetch:2+evict_last", false, parse_prefetch_policy("on:2+evict_last")},
          {"paged_v1+prefetch+every_head", false, parse_prefetch_policy("on+every_head")},
          {"paged_v1+auto", false, PrefetchPolicy::automatic()},
          {"split", true, PrefetchPolicy::off()},
          {"split+prefetch:2", true, PrefetchPolicy::fixed(2)},
          {"split+auto+evict_last+stream", true, parse_prefetch_policy("auto+evict_last+stream")}};
}

std::string test_name() {
  return ::testing::UnitTest::GetInstance()->current_test_info()->name();
}

// Runs every variant on `config` and checks each row against the reference; `label` names the
// case in the calibration lines.
void check_all_variants(const DecodeProblemConfig& config, const std::string& label,
                        bool include_v1 = true) {
  auto host = DecodeProblem::make(config);
  const auto reference = decode_attention_reference(host.host_params());
  DeviceDecodeProblem device(host);
  SplitDecode split;
  for (const Variant& v : all_variants()) {
    if (!v.split && !include_v1) continue;
    SCOPED_TRACE(v.name);
    device.poison_output();
    if (v.split) {
      split.plan(device.params(), config.seq_lens, nullptr);
      split.run(device.params(), v.policy, nullptr);
    } else {
      paged_v1_decode(device.params(), v.policy, nullptr);
    }
    EXPECT_TRUE(testing::rows_match(device.download_output(), reference, config.head_dim,
                                    config.num_q_heads, config.dtype, label + "/" + v.name));
  }
}

using GridParam =
    std::tuple<DType, int32_t /*head_dim*/, int32_t /*group*/, int32_t /*block*/, KvLayout>;

class DecodeAttentionGrid : public ::testing::TestWithParam<GridParam> {};

TEST_P(DecodeAttentionGrid, MatchesReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim, group, block, layout] = GetParam();
  DecodeProblemConfig c;
  c.dtype = dtype;
  c.head_dim = head_dim;
  c.num_kv_heads = group == 7 ? 4 : 2;  // 28:4 is Qwen2.5-7B's layout
  c.num_q_heads = c.num_kv_heads * group;
  c.block_size = block;
  c.layout = layout;
  c.seed = std::hash<std::string>{}(test_name());
  c.seq_lens = testing::random_lengths(testing::quick_mode() ? 3 : 6,
                                       testing::quick_mode() ? 300 : 2500, c.seed);
  check_all_variants(c, "flat");
  c.q_scale = testing::kPeakedQScale;  // one token dominates: logit errors show
  check_all_variants(c, "peaked");
}

std::string grid_name(const ::testing::TestParamInfo<GridParam>& info) {
  const auto [dtype, head_dim, group, block, layout] = info.param;
  return std::string(dtype_name(dtype)) + "_d" + std::to_string(head_dim) + "_g" +
         std::to_string(group) + "_b" + std::to_string(block) + "_" +
         std::string(kv_layout_name(layout));
}

INSTANTIATE_TEST_SUITE_P(AllShapes, DecodeAttentionGrid,
                         ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16),
                                            ::testing::Values(64, 128),
                                            ::testing::Values(1, 2, 4, 7, 8),
                                            ::testing::Values(16, 32, 64),
                                            ::testing::Values(KvLayout::kNHD, KvLayout::kHND)),
                         grid_name);

// 1, 2, then every multiple of 16 up to `up_to` and its neighbours: the boundaries of every
// block size (16, 32, 64) and of the 64-token tile, each +-1.
std::vector<int32_t> boundary_lengths(int32_t up_to) {
  std::vector<int32_t> lens = {1, 2};
  for (int32_t b = 16; b + 1 <= up_to; b += 16) lens.insert(lens.end(), {b - 1, b, b + 1});
  std::sort(lens.begin(), lens.end());
  lens.erase(std::unique(lens.begin(), lens.end()), lens.end());
  return lens;
}

using BoundaryParam = std::tuple<DType, int32_t /*head_dim*/, int32_t /*block*/, KvLayout>;

class DecodeAttentionBoundaries : public ::testing::TestWithParam<BoundaryParam> {};

// Lengths that end just before, on and just after each boundary. Where a length is not a
// multiple of the block size its last block holds poison beyond it, so reading one token too
// many moves the output by O(100); needles at the first and last token and on both sides of
// the first block and tile boundaries make dropping any of them an O(1) error.
TEST_P(DecodeAttentionBoundaries, MatchesReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const auto [dtype, head_dim, block, layout] = GetParam();
  DecodeProblemConfig c = testing::two_kv_heads_config(dtype, head_dim, 4, block, layout);
  c.seed = std::hash<std::string>{}(test_name());
  c.seq_lens = boundary_lengths(testing::quick_mode() ? 129 : 257);
  c.needle_positions = {0, block - 1, block, kTileTokens - 1, kTileTokens, 2 * kTileTokens, -1};
  check_all_variants(c, "flat+needles");
  c.needle_positions.clear();  // a needle would hide logit errors: it takes all the weight
  c.q_scale = testing::kPeakedQScale;
  check_all_variants(c, "peaked");
}

std::string boundary_name(const ::testing::TestParamInfo<BoundaryParam>& info) {
  const auto [dtype, head_dim, block, layout] = info.param;
  return std::string(dtype_name(dtype)) + "_d" + std::to_string(head_dim) + "_b" +
         std::to_string(block) + "_" + std::string(kv_layout_name(layout));
}

INSTANTIATE_TEST_SUITE_P(AllBlockSizes, DecodeAttentionBoundaries,
                         ::testing::Combine(::testing::Values(DType::kBFloat16, DType::kFloat16),
                                            ::testing::Values(64, 128),
                                            ::testing::Values(16, 32, 64),
                                            ::testing::Values(KvLayout::kNHD, KvLayout::kHND)),
                         boundary_name);

TEST(DecodeAttention, LargeBatchOfShortSequences) {
  L2KV_SKIP_WITHOUT_GPU();
  for (KvLayout layout : {KvLayout::kHND, KvLayout::kNHD}) {
    DecodeProblemConfig c;  // Llama3-8B heads: 32 q, 8 kv, d 128
    c.layout = layout;
    c.block_size = layout == KvLayout::kHND ? 16 : 64;
    c.seq_lens = testing::random_lengths(testing::quick_mode() ? 40 : 256, 300, 11);
    check_all_variants(c, std::string(kv_layout_name(layout)));
  }
}

TEST(DecodeAttention, LongContexts) {
  L2KV_SKIP_WITHOUT_GPU();
  // One token before, on and after a power-of-two boundary: 32767 leaves one poison slot in
  // its last block, 32769 fifteen (block 16). At 32K a dropped or extra ordinary token moves a
  // row by about 1/sqrt(32K), below the bounds: the needles and the poison make it O(1).
  const int32_t boundary = testing::quick_mode() ? 4096 : 32768;
  for (KvLayout layout : {KvLayout::kHND, KvLayout::kNHD}) {
    const std::string name(kv_layout_name(layout));
    DecodeProblemConfig c;  // Llama3-8B heads: 32 q, 8 kv
    c.layout = layout;
    c.seq_lens = {boundary - 1, boundary, boundary + 1, 17};
    check_all_variants(c, name + "/flat");
    // The planted cases take fewer heads: the reference's cost grows with heads x length.
    c.num_q_heads = 8;
    c.num_kv_heads = 2;
    c.needle_positions = {0, kTileTokens - 1, kTileTokens, boundary / 2 - 1, boundary / 2, -1};
    check_all_variants(c, name + "/flat+needles");
    c.needle_positions.clear();
    c.q_scale = testing::kPeakedQScale;
    check_all_variants(c, name + "/peaked");
  }
}

// Runs the split kernel with a sliding window of `window` on the problem and checks each row
// against the reference with the same window; returns the params it ran.
DecodeAttentionParams check_split_window(DecodeProblem& host, DeviceDecodeProblem& device,
                                         SplitDecode& split, int32_t window,
                                         const std::string& label) {
  const DecodeProblemConfig& c = host.config;
  DecodeAttentionParams host_params = host.host_params();
  host_params.sliding_window = window;
  const auto reference = decode_attention_reference(host_params);
  DecodeAttentionParams params = device.params();
  params.sliding_window = window;
  device.poison_output();
  split.plan(params, c.seq_lens, nullptr);
  split.run(params, PrefetchPolicy::off(), nullptr);
  EXPECT_TRUE(testing::rows_match(device.download_output(), reference, c.head_dim, c.num_q_heads,
                                  c.dtype, label));
  return params;
}

// Sliding windows (Gemma 3's local layers) in the split kernel, at head_dim 64, 128 and 256
// (Gemma 3 1B-12B; the split kernel's only other head size): each query sees its last
// `window` positions. Windows of 1 to beyond the longest length over ragged lengths around tile
// and block boundaries; dominating needles at the first tokens (outside every short window: a
// kernel that reads them is off by O(1)) and at the last; long sequences, so the planner's
// slices before the window start do no work and must leave empty partials. The last token's
// needle takes nearly all the weight, which hides the window's ordinary tokens, so each window
// also runs on the random tokens alone, flat and peaked, as the prefill window test does.
TEST(DecodeAttention, SplitSlidingWindowMatchesReference) {
  L2KV_SKIP_WITHOUT_GPU();
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (const int32_t head_dim : {64, 128, 256}) {
      DecodeProblemConfig c;
      c.dtype = dtype;
      c.head_dim = head_dim;
      c.num_q_heads = 8;
      c.num_kv_heads = 2;
      c.seq_lens = {1, 15, 16, 17, 63, 64, 65, 100, 1000, testing::quick_mode() ? 1500 : 5000};
      c.seed = 31 + head_dim + (dtype == DType::kFloat16 ? 7 : 0);
      const std::string shape = std::string(dtype_name(dtype)) + "/d" + std::to_string(head_dim);
      struct Pass {
        const char* name;
        std::vector<int32_t> needles;
        float q_scale;
      };
      for (const Pass& pass : {Pass{"needles", {0, 1, -1}, DecodeProblemConfig{}.q_scale},
                               Pass{"flat", {}, DecodeProblemConfig{}.q_scale},
                               Pass{"peaked", {}, testing::kPeakedQScale}}) {
        c.needle_positions = pass.needles;
        c.q_scale = pass.q_scale;
        auto host = DecodeProblem::make(c);
        DeviceDecodeProblem device(host);
        SplitDecode split;
        for (const int32_t window : {1, 5, 16, 17, 64, 100, 1024, 8192}) {
          const std::string label = shape + "/" + pass.name + "/window " + std::to_string(window);
          SCOPED_TRACE(label);
          const DecodeAttentionParams params =
              check_split_window(host, device, split, window, label);
          // paged_v1 has no window: it refuses rather than attend to everything.
          EXPECT_THROW(paged_v1_decode(params, PrefetchPolicy::off(), nullptr), Error);
        }
      }
    }
}

// A long context cut into one-tile slices (forced; the planner makes 30 or more slices at Gemma 3
// 12B's shape and 32K tokens): with a short window, every chunk of 16 slices the merge reads
// before the window is empty (log-sum-exp -inf throughout), which once made the merge NaN. With
// needles at both ends, and without (the last one would hide the window's ordinary tokens).
TEST(DecodeAttention, SplitSlidingWindowWithManyEmptySlices) {
  L2KV_SKIP_WITHOUT_GPU();
  for (const int32_t head_dim : {128, 256}) {
    for (const bool needles : {true, false}) {
      DecodeProblemConfig c;
      c.head_dim = head_dim;
      c.num_q_heads = 8;
      c.num_kv_heads = 2;
      c.seq_lens = {testing::quick_mode() ? 4100 : 8200, 70};
      if (needles) c.needle_positions = {0, -1};
      c.seed = 91 + head_dim;
      auto host = DecodeProblem::make(c);
      DeviceDecodeProblem device(host);
      SplitDecode split;
      split.set_forced_tiles_per_split(1);
      for (const int32_t window : {16, 1024}) {
        const std::string label = "d" + std::to_string(head_dim) + "/one-tile slices/" +
                                  (needles ? "needles" : "flat") + "/window " +
                                  std::to_string(window);
        SCOPED_TRACE(label);
        check_split_window(host, device, split, window, label);
      }
    }
  }
}

TEST(DecodeAttention, SingleTokenAndSingleKvHead) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.num_q_heads = 8;
  c.num_kv_heads = 1;
  c.seq_lens = {1};
  check_all_variants(c, "len1");
  c.seq_lens = {testing::quick_mode() ? 3000 : 20000};  // one pair split over many blocks
  check_all_variants(c, "long");
}

TEST(DecodeAttention, SplitReplansAndRepeatsCorrectly) {
  L2KV_SKIP_WITHOUT_GPU();
  // Reusing one SplitDecode across shapes and repeating a plan exercises the workspace growth
  // and the reset of the per-sequence arrival counters between launches.
  SplitDecode split;
  for (int round = 0; round < 3; ++round) {
    DecodeProblemConfig c;
    c.seed = 100 + round;
    c.seq_lens = testing::random_lengths(1 + round * 7, 3000 * (round + 1), c.seed);
    auto host = DecodeProblem::make(c);
    const auto reference = decode_attention_reference(host.host_params());
    DeviceDecodeProblem device(host);
    split.plan(device.params(), c.seq_lens, nullptr);
    for (int repeat = 0; repeat < 3; ++repeat) {
      device.poison_output();
      split.run(device.params(), PrefetchPolicy::automatic(), nullptr);
      EXPECT_TRUE(testing::rows_match(
          device.download_output(), reference, c.head_dim, c.num_q_heads, c.dtype,
          "round" + std::to_string(round) + "/repeat" + std::to_string(repeat)));
    }
  }
}

TEST(DecodeAttention, SplitGraphModeKeepsItsGridAndBuffers) {
  L2KV_SKIP_WITHOUT_GPU();
  // Graph mode: buffers reserved once for up to 24 sequences and a fixed grid per batch size;
  // plans of any lengths must fit it, and the blocks beyond a plan's items exit untouched.
  SplitDecode split;
  DecodeProblemConfig shape;
  shape.seq_lens = {1};
  auto shape_host = DecodeProblem::make(shape);
  DeviceDecodeProblem shape_device(shape_host);
  split.reserve_for_graphs(24, shape_device.params());
  ASSERT_TRUE(split.graph_mode());
  for (int round = 0; round < 4; ++round) {
    DecodeProblemConfig c;
    c.seed = 300 + round;
    c.seq_lens = testing::random_lengths(round == 0 ? 1 : 6 * round, 700 * (round + 1), c.seed);
    if (round == 3) c.seq_lens[0] = 9000;  // one long sequence among short ones
    auto host = DecodeProblem::make(c);
    const auto reference = decode_attention_reference(host.host_params());
    DeviceDecodeProblem device(host);
    split.plan(device.params(), c.seq_lens, nullptr);
    device.poison_output();
    split.run(device.params(), PrefetchPolicy::off(), nullptr);
    EXPECT_TRUE(testing::rows_match(device.download_output(), reference, c.head_dim, c.num_q_heads,
                                    c.dtype, "round" + std::to_string(round)));
  }
  DecodeProblemConfig big;
  big.seq_lens.assign(25, 100);
  auto big_host = DecodeProblem::make(big);
  DeviceDecodeProblem big_device(big_host);
  EXPECT_THROW(split.plan(big_device.params(), big.seq_lens, nullptr), Error);
}

TEST(DecodeAttention, RejectsInvalidParametersBeforeLaunch) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.seq_lens = {5, 9};
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  SplitDecode split;
  auto params = device.params();
  params.num_q_heads = 30;
  EXPECT_THROW(split.plan(params, c.seq_lens, nullptr), Error);
  std::vector<int32_t> too_long{5, 9999};
  EXPECT_THROW(split.plan(device.params(), too_long, nullptr), Error);
  EXPECT_THROW(split.run(device.params(), PrefetchPolicy::off(), nullptr), Error);  // no plan yet
  params = device.params();
  params.max_seq_len = kPagedV1SinglePassMaxLen + 1;  // needs a PagedV1Decode workspace
  EXPECT_THROW(paged_v1_decode(params, PrefetchPolicy::off(), nullptr), Error);
}

}  // namespace
}  // namespace l2kv
