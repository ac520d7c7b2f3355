#include "l2kv/kernels/attention/split_plan.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

// Every token of every (sequence, head) is covered exactly once, slices are whole tiles except
// at the sequence end, and partial slots are consecutive per pair.
void expect_consistent(const SplitPlan& plan, const std::vector<int32_t>& lens, int32_t heads,
                       int32_t tile) {
  std::map<int32_t, std::vector<const SplitWorkItem*>> by_pair;
  for (const auto& item : plan.items) by_pair[item.pair].push_back(&item);
  ASSERT_EQ(by_pair.size(), lens.size() * heads);
  int32_t slots_seen = 0;
  for (auto& [pair, items] : by_pair) {
    const int32_t seq = pair / heads;
    std::sort(items.begin(), items.end(),
              [](auto* a, auto* b) { return a->token_begin < b->token_begin; });
    ASSERT_EQ(static_cast<int32_t>(items.size()), plan.pair_num_splits[pair]);
    int32_t expected_begin = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const auto& it = *items[i];
      EXPECT_EQ(it.seq, seq);
      EXPECT_EQ(it.kv_head, pair % heads);
      EXPECT_EQ(it.token_begin, expected_begin);
      EXPECT_EQ(it.token_begin % tile, 0);
      EXPECT_GT(it.token_end, it.token_begin);
      EXPECT_LE(it.token_end - it.token_begin, plan.tiles_per_split * tile);
      if (items.size() == 1) {
        EXPECT_EQ(it.partial_slot, -1);
      } else {
        EXPECT_EQ(it.partial_slot, plan.pair_first_slot[pair] + static_cast<int32_t>(i));
        ++slots_seen;
      }
      expected_begin = it.token_end;
    }
    EXPECT_EQ(expected_begin, lens[seq]);
  }
  EXPECT_EQ(slots_seen, plan.num_partial_slots);
  for (size_t i = 1; i < plan.items.size(); ++i)
    EXPECT_GE(plan.items[i - 1].token_end - plan.items[i - 1].token_begin,
              plan.items[i].token_end - plan.items[i].token_begin);
}

TEST(SplitPlan, SingleLongSequenceFillsTheMachine) {
  SplitPlanConfig config{64, 264, 1};
  const std::vector<int32_t> lens{8192};
  const SplitPlan plan = plan_split_decode(lens, 8, config);
  expect_consistent(plan, lens, 8, 64);
  // 1024 tiles on 264 slots: without splitting, 8 blocks would do all the work (cost 129).
  EXPECT_GE(plan.items.size(), 132u);  // every SM gets work
  EXPECT_LE(plan.items.size(), 264u);  // in a single wave
  EXPECT_LE(plan.estimated_makespan_tiles, 12.0);
}

TEST(SplitPlan, LargeBatchKeepsWholeSequences) {
  SplitPlanConfig config{64, 264, 1};
  const std::vector<int32_t> lens(128, 4608);
  const SplitPlan plan = plan_split_decode(lens, 8, config);
  expect_consistent(plan, lens, 8, 64);
  EXPECT_EQ(plan.items.size(), 128u * 8u);
  EXPECT_EQ(plan.num_partial_slots, 0);
}

TEST(SplitPlan, AvoidsAPartialSecondWave) {
  // 16 x 8 = 128 pairs of 72 tiles on 264 slots: two slices each fill one wave exactly.
  SplitPlanConfig config{64, 264, 1};
  const std::vector<int32_t> lens(16, 4608);
  const SplitPlan plan = plan_split_decode(lens, 8, config);
  expect_consistent(plan, lens, 8, 64);
  EXPECT_EQ(plan.items.size(), 256u);
  EXPECT_LE(plan.estimated_makespan_tiles, 36 + 1 + 2 + 2.0 / 16 + 1e-9);
}

TEST(SplitPlan, RaggedBatchesStayConsistent) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    std::uniform_int_distribution<int32_t> batch_dist(1, 256), len_dist(1, 40000);
    std::vector<int32_t> lens(batch_dist(rng));
    for (auto& l : lens) l = len_dist(rng);
    const int32_t heads = 1 + trial % 8;
    SplitPlanConfig config{64, 132 * (1 + trial % 3), 1};
    const SplitPlan plan = plan_split_decode(lens, heads, config);
    expect_consistent(plan, lens, heads, 64);
  }
}

TEST(SplitPlan, KeepsToTheItemCapacityOfAGraph) {
  // One long sequence would be cut into many slices; a capacity of 40 items bounds that, and
  // every token is still covered exactly once.
  SplitPlanConfig config;
  config.max_items = 40;
  const std::vector<int32_t> lens = {20000, 70, 3};
  const SplitPlan plan = plan_split_decode(lens, 8, config);
  EXPECT_LE(plan.items.size(), 40u);
  std::vector<int64_t> covered(lens.size() * 8, 0);
  for (const auto& item : plan.items)
    covered[item.seq * 8 + item.kv_head] += item.token_end - item.token_begin;
  for (size_t i = 0; i < covered.size(); ++i) EXPECT_EQ(covered[i], lens[i / 8]);
  config.max_items = 16;  // fewer than the 24 (sequence, head) pairs
  EXPECT_THROW(plan_split_decode(lens, 8, config), Error);
  config.max_items = 0;
  EXPECT_GT(plan_split_decode(lens, 8, config).items.size(), 40u);  // unbounded, it splits more
}

TEST(SplitPlan, KeepsSlicesPerPairWithinTheMergeSpace) {
  // A forced short slice over a long context would cut one pair into 3125 slices, more than
  // the merge's shared memory holds; max_splits lengthens the slices instead.
  SplitPlanConfig config;
  config.forced_tiles_per_split = 1;
  config.max_splits = 5;
  const std::vector<int32_t> lens = {200000, 130};
  const SplitPlan plan = plan_split_decode(lens, 2, config);
  std::map<int32_t, int32_t> slices;
  std::vector<int64_t> covered(lens.size() * 2, 0);
  for (const auto& item : plan.items) {
    ++slices[item.pair];
    covered[item.seq * 2 + item.kv_head] += item.token_end - item.token_begin;
  }
  for (const auto& [pair, count] : slices) EXPECT_LE(count, 5) << "pair " << pair;
  for (size_t i = 0; i < covered.size(); ++i) EXPECT_EQ(covered[i], lens[i / 2]);
  EXPECT_EQ(plan.pair_num_splits[0], 5);
}

TEST(SplitPlan, Fp8CostsKeepShortSequencesWhole) {
  // 64 x 4 pairs of 16 tiles on 396 slots (fp8: three blocks per SM). With 16-bit costs the
  // planner splits them to fill the slots; with fp8's (cheaper tiles, dearer blocks) whole
  // sequences win, as measured on an H200 (29 us whole against 35 us split in six-tile slices).
  SplitPlanConfig config{64, 396, 1};
  config.group_size = 7;
  const std::vector<int32_t> lens(64, 1024);
  const SplitPlan split = plan_split_decode(lens, 4, config);
  EXPECT_GT(split.items.size(), 256u);
  use_fp8_cache_costs(config);
  const SplitPlan whole = plan_split_decode(lens, 4, config);
  expect_consistent(whole, lens, 4, 64);
  EXPECT_EQ(whole.items.size(), 256u);
  EXPECT_EQ(whole.num_partial_slots, 0);
}

TEST(SplitPlan, RejectsBadInput) {
  SplitPlanConfig config;
  const std::vector<int32_t> empty;
  EXPECT_THROW(plan_split_decode(empty, 8, config), Error);
  const std::vector<int32_t> zero{4, 0};
  EXPECT_THROW(plan_split_decode(zero, 8, config), Error);
  const std::vector<int32_t> ok{4};
  EXPECT_THROW(plan_split_decode(ok, 0, config), Error);
}

}  // namespace
}  // namespace l2kv
