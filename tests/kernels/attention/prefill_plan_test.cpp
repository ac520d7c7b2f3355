// The prefill work list's bound, without a GPU: the engine reserves the list at start from
// --max-num-batched-tokens and --max-num-seqs, so the bound must cover every step within them;
// plan() refuses rather than allocate when nothing was reserved, and a negative block limit is
// refused; the order's bucket.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/kernels/attention/prefill_attention.h"

namespace l2kv {
namespace {

// The work items PrefillAttention::plan makes: ceil(n / rows) per chunk of n tokens, per KV
// head, with `rows` query tokens per block (64, 32, 16 for 1, 2, 4+ query heads per KV head).
int64_t items_for(const std::vector<int32_t>& chunk_tokens, int32_t kv_heads, int32_t rows) {
  int64_t items = 0;
  for (int32_t n : chunk_tokens) items += (n + rows - 1) / rows;
  return items * kv_heads;
}

TEST(PrefillWorkList, BoundCoversEveryStepWithinTheLimits) {
  struct Shape {
    int32_t kv_heads, q_heads, rows;
  };
  std::mt19937 rng(5);
  for (const Shape& s : {Shape{8, 8, 64}, Shape{4, 8, 32}, Shape{8, 32, 16}, Shape{4, 28, 16}})
    for (const auto& [tokens, seqs] : {std::pair{2048, 256}, std::pair{8192, 256}, std::pair{64, 4},
                                       std::pair{100, 300}, std::pair{1, 1}}) {
      const int64_t bound = PrefillAttention::max_work_items(tokens, seqs, s.kv_heads, s.q_heads);
      // The worst step: as many chunks as allowed, all of one token but the last.
      const int32_t chunks = std::min(tokens, seqs);
      std::vector<int32_t> worst(chunks, 1);
      worst.back() = tokens - (chunks - 1);
      EXPECT_GE(bound, items_for(worst, s.kv_heads, s.rows)) << tokens << " " << seqs;
      // Random steps within the limits.
      for (int trial = 0; trial < 200; ++trial) {
        const int32_t n = std::uniform_int_distribution<int32_t>(1, chunks)(rng);
        std::vector<int32_t> split(n, 1);
        for (int32_t left = tokens - n; left > 0; --left)
          ++split[std::uniform_int_distribution<int32_t>(0, n - 1)(rng)];
        ASSERT_GE(bound, items_for(split, s.kv_heads, s.rows));
      }
      // And not wastefully above the worst case (one spare tile per chunk at most).
      EXPECT_LE(bound, items_for(worst, s.kv_heads, s.rows) + int64_t{s.kv_heads} * chunks);
    }
  EXPECT_THROW(PrefillAttention::max_work_items(0, 4, 8, 8), Error);
  EXPECT_THROW(PrefillAttention::max_work_items(64, 0, 8, 8), Error);
}

TEST(PrefillWorkList, PlanRefusesWithoutAReservedList) {
  // No reserve(): plan() throws before any device call, instead of allocating mid-step.
  PrefillAttention prefill;
  PagedKvCache kv;
  kv.num_blocks = 4;
  kv.block_size = 16;
  kv.num_kv_heads = 2;
  kv.head_dim = 128;
  kv.batch_size = 1;
  kv.max_blocks_per_seq = 4;
  const std::vector<PrefillChunk> chunks = {{0, 0, 20, 0}};
  EXPECT_THROW(prefill.plan(kv, 8, chunks, nullptr), Error);
}

TEST(PrefillWorkList, PersistentBlockLimitRefusesNegativeCounts) {
  PrefillAttention prefill;
  EXPECT_THROW(prefill.set_max_wgmma_blocks(-1), Error);
  EXPECT_NO_THROW(prefill.set_max_wgmma_blocks(0));
  EXPECT_NO_THROW(prefill.set_max_wgmma_blocks(3));
}

// The order's bucket follows the step's longest end: buckets of 1,024 keys below 2,048, then an
// eighth of the end as a power of two (bench/NOTES.md: 1,024 keys suit 1K-token prompts, 256
// suit 2K ones, 4,096 suit 32K ones).
TEST(PrefillWorkList, OrderBucketIsAnEighthOfTheLongestEnd) {
  for (const int32_t end : {-1, 0, 1, 1024, kOrderShortEnd - 1})
    EXPECT_EQ(prefill_order_bucket(end), kOrderShortBucket) << end;
  EXPECT_EQ(prefill_order_bucket(kOrderShortEnd), kOrderShortEnd / kOrderBucketFraction);
  EXPECT_EQ(prefill_order_bucket(2048), 256);
  EXPECT_EQ(prefill_order_bucket(4095), 256);
  EXPECT_EQ(prefill_order_bucket(4096), 512);
  EXPECT_EQ(prefill_order_bucket(8191), 512);
  EXPECT_EQ(prefill_order_bucket(8192), 1024);
  EXPECT_EQ(prefill_order_bucket(32768), 4096);
  EXPECT_EQ(prefill_order_bucket(40000), 4096);
  EXPECT_EQ(prefill_order_bucket(131072), 16384);
  EXPECT_EQ(prefill_order_bucket(INT32_MAX), 1 << 27);
}

}  // namespace
}  // namespace l2kv
