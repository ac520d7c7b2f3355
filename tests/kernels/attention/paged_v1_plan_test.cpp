// paged_v1's host plan, without a GPU: one pass up to 48K tokens, partitions with a reduce
// beyond, a workspace sized from the length bound.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "l2kv/core/error.h"
#include "l2kv/kernels/attention/decode_attention.h"

namespace l2kv {
namespace {

constexpr int32_t kSms = 132;  // H100 / H200

TEST(PagedV1Plan, OnePassUpToTheSharedMemoryLimit) {
  for (int32_t block : {16, 32, 64})
    for (int32_t len :
         {1, 17, 4096, 32769, kPagedV1SinglePassMaxLen - 1, kPagedV1SinglePassMaxLen}) {
      const PagedV1Plan plan = plan_paged_v1(len, block, 64, 32, kSms);
      EXPECT_FALSE(plan.partitioned()) << len;
      EXPECT_EQ(plan.max_partitions, 1);
      EXPECT_EQ(plan.grid_partitions, 1);
      EXPECT_EQ(plan.partition_tokens, (len + block - 1) / block * block);  // today's v1 launch
      EXPECT_EQ(paged_v1_workspace_floats(64, 32, 128, len), 0);
    }
}

TEST(PagedV1Plan, PartitionsCoverEveryLengthTheEngineAdmits) {
  // Past 48K every length is covered by whole partitions: nothing is clamped.
  for (int32_t len : {kPagedV1SinglePassMaxLen + 1, 60064, 65536, 131072, 133120, 1 << 20}) {
    const PagedV1Plan plan = plan_paged_v1(len, 16, 1, 32, kSms);
    ASSERT_TRUE(plan.partitioned()) << len;
    EXPECT_EQ(plan.partition_tokens, kPagedV1PartitionTokens);
    EXPECT_GE(int64_t{plan.max_partitions} * plan.partition_tokens, len);
    EXPECT_LT(int64_t{plan.max_partitions - 1} * plan.partition_tokens, len);
    EXPECT_GE(plan.grid_partitions, 1);
    EXPECT_LE(plan.grid_partitions, plan.max_partitions);
    // Output, max and exp-sum per (sequence, head, partition).
    EXPECT_EQ(paged_v1_workspace_floats(3, 32, 128, len),
              int64_t{3} * 32 * plan.max_partitions * 130);
  }
  EXPECT_EQ(plan_paged_v1(131072, 16, 1, 32, kSms).max_partitions, 32);
  EXPECT_EQ(plan_paged_v1(kPagedV1SinglePassMaxLen + 1, 16, 1, 32, kSms).max_partitions, 13);
}

TEST(PagedV1Plan, GridPartitionsFillTheDeviceOnlyWhenTheBatchDoesNot) {
  // Batch 1 of 32 heads: 32 blocks would leave most of 132 SMs idle.
  EXPECT_EQ(plan_paged_v1(131072, 16, 1, 32, kSms).grid_partitions,
            (kPagedV1TargetBlocksPerSm * kSms + 31) / 32);
  // Few heads: every partition gets its own block.
  EXPECT_EQ(plan_paged_v1(131072, 16, 1, 4, kSms).grid_partitions, 32);
  // A batch that fills the device alone: one block per (head, sequence) walks its partitions.
  EXPECT_EQ(plan_paged_v1(131072, 16, 64, 32, kSms).grid_partitions, 1);
  EXPECT_EQ(plan_paged_v1(131072, 16, 256, 32, kSms).grid_partitions, 1);
}

TEST(PagedV1Plan, RejectsWhatItCannotPlan) {
  EXPECT_THROW(plan_paged_v1(0, 16, 1, 32, kSms), Error);
  EXPECT_THROW(plan_paged_v1(100, 48, 1, 32, kSms), Error);  // does not divide a partition
  EXPECT_THROW(plan_paged_v1(100, 16, 0, 32, kSms), Error);
  EXPECT_THROW(plan_paged_v1(100, 16, 1, 0, kSms), Error);
  EXPECT_THROW(plan_paged_v1(100, 16, 1, 32, 0), Error);
}

// One launch holds a sequence per grid row (at most 65535): a larger batch is refused with a
// clear error before anything is launched, never run on the rows that fit.
TEST(PagedV1Plan, RefusesABatchBeyondOneGridColumn) {
  DecodeAttentionParams params;
  params.kv.batch_size = 65536;
  params.kv.block_size = 16;
  params.kv.head_dim = 128;
  params.kv.num_kv_heads = 8;
  params.num_q_heads = 32;
  params.max_seq_len = 1024;
  try {
    paged_v1_decode(params, PrefetchPolicy::off(), nullptr);
    FAIL() << "a batch of 65536 was launched";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("65535"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace l2kv
