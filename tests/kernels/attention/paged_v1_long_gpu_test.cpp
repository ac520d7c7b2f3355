// paged_v1 past its single-pass limit of 48K tokens: partitions of 4096 tokens and the reduce,
// against the CPU reference at 64K and 130K tokens, at partition boundaries +-1, under the
// engine's length bound (max_model_len, one launch for every length, CUDA-graph replay), and
// its refusals: a device length beyond the bound answers NaN rows, never a clamped answer, and
// a workspace too small for the launch throws. Few heads keep the double reference fast.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/decode_reference.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;
using testing::DeviceDecodeProblem;

constexpr int32_t kPart = kPagedV1PartitionTokens;

// Eight query heads over two KV heads, Llama-3-8B's head_dim.
DecodeProblemConfig few_heads(std::vector<int32_t> lens, uint64_t seed) {
  DecodeProblemConfig c;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.seq_lens = std::move(lens);
  c.seed = seed;
  return c;
}

// Runs PagedV1Decode with `bound` as the length bound (the engine passes max_model_len) under
// each policy and checks every row against the reference.
void check_v1(const DecodeProblemConfig& config, int32_t bound, const std::string& label) {
  auto host = DecodeProblem::make(config);
  const auto reference = decode_attention_reference(host.host_params());
  DeviceDecodeProblem device(host);
  DecodeAttentionParams params = device.params();
  params.max_seq_len = bound;
  PagedV1Decode v1;
  v1.reserve(params.kv.batch_size, params.num_q_heads, params.kv.head_dim, bound);
  for (const char* policy : {"off", "on:1", "on:2+evict_last", "auto"}) {
    SCOPED_TRACE(policy);
    device.poison_output();
    v1.run(params, parse_prefetch_policy(policy), nullptr);
    EXPECT_TRUE(testing::rows_match(device.download_output(), reference, config.head_dim,
                                    config.num_q_heads, config.dtype,
                                    label + "/" + std::string(policy)));
  }
}

// 64K and 130K tokens, as the 60,000-token prompt and beyond Llama-3's 128K. Needles on
// both sides of the first partition boundary, of the old 48K clamp and at both ends make a
// dropped partition an O(1) error; without them, a peaked softmax shows logit errors.
TEST(PagedV1Long, MatchesReferenceAt64KAnd130K) {
  L2KV_SKIP_WITHOUT_GPU();
  const std::vector<int32_t> lens =
      testing::quick_mode() ? std::vector<int32_t>{49153, 3} : std::vector<int32_t>{65536, 133120};
  for (KvLayout layout : {KvLayout::kHND, KvLayout::kNHD}) {
    const std::string name(kv_layout_name(layout));
    DecodeProblemConfig c = few_heads(lens, 41);
    c.layout = layout;
    c.needle_positions = {0, kPart - 1, kPart, 49151, 49152, -1};
    check_v1(c, c.seq_lens[0] > c.seq_lens[1] ? c.seq_lens[0] : c.seq_lens[1],
             name + "/flat+needles");
    c.needle_positions.clear();
    c.q_scale = testing::kPeakedQScale;
    check_v1(c, 131072 + kPart, name + "/peaked");
  }
}

// Lengths one before, on and one after partition boundaries (and the single-pass limit), with
// every block size, both dtypes and both head dims, under a bound that needs partitions.
TEST(PagedV1Long, PartitionBoundaries) {
  L2KV_SKIP_WITHOUT_GPU();
  std::vector<int32_t> lens = {
      1, 2, kPart - 1, kPart, kPart + 1, 2 * kPart - 1, 2 * kPart, 2 * kPart + 1};
  if (!testing::quick_mode())
    lens.insert(lens.end(), {kPagedV1SinglePassMaxLen - 1, kPagedV1SinglePassMaxLen,
                             kPagedV1SinglePassMaxLen + 1});
  for (DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (int32_t head_dim : {64, 128})
      for (int32_t block : {16, 32, 64}) {
        const std::string name = std::string(dtype_name(dtype)) + "_d" + std::to_string(head_dim) +
                                 "_b" + std::to_string(block);
        DecodeProblemConfig c = few_heads(lens, 7 + head_dim + block);
        c.dtype = dtype;
        c.head_dim = head_dim;
        c.block_size = block;
        c.layout = block == 32 ? KvLayout::kNHD : KvLayout::kHND;
        c.needle_positions = {0, kPart - 1, kPart, 2 * kPart - 1, 2 * kPart, -1};
        check_v1(c, kPagedV1SinglePassMaxLen + 1, name + "/needles");
        c.needle_positions.clear();
        c.q_scale = testing::kPeakedQScale;
        check_v1(c, kPagedV1SinglePassMaxLen + 1, name + "/peaked");
      }
}

// The engine's launch: the bound is max_model_len (128K) whatever the batch holds. Short
// sequences are written by their only partition, longer ones merged by the reduce; a batch of
// one long sequence spreads its partitions over blocks, a large batch walks them in one block.
TEST(PagedV1Long, EngineBoundWithMixedLengths) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c = few_heads(testing::random_lengths(24, 3000, 17), 17);
  c.seq_lens[3] = 20000;  // five partitions
  c.seq_lens[9] = kPart + 1;
  c.needle_positions = {0, kPart - 1, kPart, -1};
  check_v1(c, 131072, "batch24");
  // Without needles, which take all the weight: a peaked softmax shows logit errors. (Its
  // reference, 8 heads over ~58K tokens, is about a sixth of this test's 3-4 s on an H200.)
  c.needle_positions.clear();
  c.q_scale = testing::kPeakedQScale;
  check_v1(c, 131072, "batch24/peaked");
  check_v1(few_heads({30000}, 18), 131072, "batch1");
  DecodeProblemConfig wide = few_heads(testing::random_lengths(40, 3000, 19), 19);
  wide.seq_lens[5] = 9000;
  wide.num_q_heads = 32;
  wide.num_kv_heads = 8;
  check_v1(wide, 131072, "batch40x32heads");  // 1280 blocks: one per (head, sequence)
}

// Graph capture: run() allocates nothing and synchronizes nothing, so a captured launch
// replays correctly with new lengths in the same buffers.
TEST(PagedV1Long, CapturedInAGraphReplaysNewLengths) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c = few_heads({9000, 100, 20000}, 23);
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  DecodeAttentionParams params = device.params();
  params.max_seq_len = 131072;
  PagedV1Decode v1;
  v1.reserve(3, params.num_q_heads, params.kv.head_dim, params.max_seq_len);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  v1.run(params, PrefetchPolicy::automatic(), stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  // Shorter lengths in the same device buffer: every table still covers them.
  for (const std::vector<int32_t>& lens : {c.seq_lens, std::vector<int32_t>{4097, 1, 19999}}) {
    host.config.seq_lens = lens;
    const auto reference = decode_attention_reference(host.host_params());
    ASSERT_EQ(cudaMemcpy(const_cast<int32_t*>(params.kv.seq_lens), lens.data(), lens.size() * 4,
                         cudaMemcpyHostToDevice),
              cudaSuccess);
    device.poison_output();
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_TRUE(testing::rows_match(device.download_output(), reference, c.head_dim, c.num_q_heads,
                                    c.dtype, "replay" + std::to_string(lens[0])));
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

// A device length beyond the bound the launch was sized for is a caller error the host checks
// rule out; the kernel answers NaN for that sequence instead of attending to a clamped prefix,
// and the other sequences are unaffected. Both the single pass and the partitioned launch.
TEST(PagedV1Long, LengthBeyondTheBoundGivesNaNNotAClampedAnswer) {
  L2KV_SKIP_WITHOUT_GPU();
  for (const auto& [bound, long_len] : {std::pair{4096, 5000}, std::pair{49153, 53000}}) {
    SCOPED_TRACE(bound);
    DecodeProblemConfig c = few_heads({100, long_len}, 29);
    auto host = DecodeProblem::make(c);
    const auto reference = decode_attention_reference(host.host_params());
    DeviceDecodeProblem device(host);
    DecodeAttentionParams params = device.params();
    params.max_seq_len = bound;
    PagedV1Decode v1;
    v1.reserve(2, params.num_q_heads, params.kv.head_dim, bound);
    // Finite poison: a clamped answer or an unwritten row would stay finite.
    const size_t out_elems = 2 * static_cast<size_t>(c.num_q_heads) * c.head_dim;
    ASSERT_EQ(cudaMemset(params.out, 0, out_elems * 2), cudaSuccess);
    v1.run(params, PrefetchPolicy::off(), nullptr);
    const auto out = device.download_output();
    const size_t row = static_cast<size_t>(c.num_q_heads) * c.head_dim;
    for (size_t i = row; i < 2 * row; ++i) ASSERT_TRUE(std::isnan(out[i])) << i;
    const std::vector<float> first(out.begin(), out.begin() + static_cast<int64_t>(row));
    const std::vector<float> first_ref(reference.begin(),
                                       reference.begin() + static_cast<int64_t>(row));
    EXPECT_TRUE(testing::rows_match(first, first_ref, c.head_dim, c.num_q_heads, c.dtype,
                                    "in-bound sequence"));
  }
}

TEST(PagedV1Long, RefusesLaunchesItsWorkspaceCannotHold) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c = few_heads({100, 200, 300}, 31);
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  DecodeAttentionParams params = device.params();
  params.max_seq_len = 65536;
  EXPECT_THROW(paged_v1_decode(params, PrefetchPolicy::off(), nullptr), Error);  // no workspace
  PagedV1Decode v1;
  EXPECT_THROW(v1.run(params, PrefetchPolicy::off(), nullptr), Error);  // nothing reserved
  v1.reserve(2, params.num_q_heads, params.kv.head_dim, 65536);
  EXPECT_THROW(v1.run(params, PrefetchPolicy::off(), nullptr), Error);  // batch of 3 > 2
  v1.reserve(3, params.num_q_heads, params.kv.head_dim, 65536);
  params.max_seq_len = 65536 + kPart;
  EXPECT_THROW(v1.run(params, PrefetchPolicy::off(), nullptr), Error);  // longer than reserved
  params.max_seq_len = 65536;
  EXPECT_NO_THROW(v1.run(params, PrefetchPolicy::off(), nullptr));
  EXPECT_THROW(v1.run(params, parse_prefetch_policy("on+pdl"), nullptr), Error);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
}

}  // namespace
}  // namespace l2kv
