// The block manager's bookkeeping: allocation and growth, reference counts, the reserved null
// block, and no leaks after any sequence of operations.
#include "l2kv/engine/block_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

TEST(BlockManager, AllocatesGrowsAndFrees) {
  BlockManager bm(9, 4);  // 8 usable blocks of 4 tokens
  EXPECT_EQ(bm.num_usable(), 8);
  EXPECT_EQ(bm.num_free(), 8);
  EXPECT_EQ(bm.blocks_for(0), 0);
  EXPECT_EQ(bm.blocks_for(4), 1);
  EXPECT_EQ(bm.blocks_for(5), 2);

  bm.allocate_for(7, 1);
  ASSERT_EQ(bm.block_table(7).size(), 1u);
  bm.allocate_for(7, 4);  // still one block
  EXPECT_EQ(bm.block_table(7).size(), 1u);
  bm.allocate_for(7, 9);
  EXPECT_EQ(bm.block_table(7).size(), 3u);
  bm.allocate_for(7, 2);  // never shrinks
  EXPECT_EQ(bm.block_table(7).size(), 3u);
  EXPECT_EQ(bm.num_free(), 5);

  bm.allocate_for(8, 20);
  EXPECT_EQ(bm.num_free(), 0);
  EXPECT_FALSE(bm.can_allocate(9, 1));
  EXPECT_TRUE(bm.can_allocate(7, 12));  // covered already
  EXPECT_THROW(bm.allocate_for(9, 1), Error);
  EXPECT_FALSE(bm.has_table(9));  // a failed allocation changes nothing
  EXPECT_THROW(bm.allocate_for(7, 13), Error);
  EXPECT_EQ(bm.block_table(7).size(), 3u);

  std::set<int32_t> seen;
  for (int64_t seq : {7, 8})
    for (int32_t b : bm.block_table(seq)) {
      EXPECT_NE(b, BlockManager::kNullBlock);
      EXPECT_TRUE(seen.insert(b).second) << "block " << b << " handed out twice";
      EXPECT_EQ(bm.ref_count(b), 1);
    }
  EXPECT_EQ(seen.size(), 8u);

  bm.free(7);
  EXPECT_EQ(bm.num_free(), 3);
  EXPECT_TRUE(bm.block_table(7).empty());
  bm.free(7);  // unknown: ignored
  bm.free(8);
  EXPECT_EQ(bm.num_free(), 8);
  EXPECT_EQ(bm.num_sequences(), 0);
}

TEST(BlockManager, NullBlockIsNeverHandedOut) {
  BlockManager bm(2, 16);  // the smallest pool: one usable block
  bm.allocate_for(1, 16);
  ASSERT_EQ(bm.block_table(1).size(), 1u);
  EXPECT_EQ(bm.block_table(1)[0], 1);
  EXPECT_FALSE(bm.can_allocate(1, 17));
  EXPECT_EQ(bm.ref_count(BlockManager::kNullBlock), 0);
  EXPECT_THROW(BlockManager(1, 16), Error);
  EXPECT_THROW(BlockManager(4, 0), Error);
}

TEST(BlockManager, ReferenceCountsAndHashes) {
  BlockManager bm(6, 2);
  bm.allocate_for(1, 6);  // 3 blocks
  const std::vector<int32_t> parent(bm.block_table(1).begin(), bm.block_table(1).end());
  bm.set_block_hash(parent[0], 42);
  EXPECT_EQ(bm.block_hash(parent[0]), 42u);
  bm.share(2, std::span<const int32_t>(parent).first(2));  // a prefix of two full blocks
  EXPECT_EQ(bm.ref_count(parent[0]), 2);
  EXPECT_EQ(bm.ref_count(parent[2]), 1);
  EXPECT_THROW(bm.share(2, parent), Error);  // already has a table
  bm.allocate_for(2, 5);                     // grows past the shared prefix
  EXPECT_EQ(bm.block_table(2).size(), 3u);
  EXPECT_EQ(bm.num_free(), 1);

  bm.free(1);  // shared blocks stay with sequence 2
  EXPECT_EQ(bm.num_free(), 2);
  EXPECT_EQ(bm.ref_count(parent[0]), 1);
  EXPECT_EQ(bm.block_hash(parent[0]), 42u);
  EXPECT_THROW(bm.share(3, std::span<const int32_t>(parent).subspan(2)), Error);  // free block
  bm.free(2);
  EXPECT_EQ(bm.num_free(), 5);
  EXPECT_FALSE(bm.block_hash(parent[0]).has_value());  // forgotten when freed
  EXPECT_THROW(bm.ref_count(6), Error);
}

TEST(BlockManager, RandomOperationsNeverLeak) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 20; ++trial) {
    const int32_t num_blocks = 2 + static_cast<int32_t>(rng() % 40);
    const int32_t block_size = 1 + static_cast<int32_t>(rng() % 8);
    BlockManager bm(num_blocks, block_size);
    std::map<int64_t, int64_t> tokens;  // sequence -> tokens covered
    for (int op = 0; op < 500; ++op) {
      const int64_t seq = rng() % 12;
      switch (rng() % 4) {
        case 0:
        case 1: {  // grow
          const int64_t want = tokens[seq] + 1 + rng() % (3 * block_size);
          if (bm.can_allocate(seq, want)) {
            bm.allocate_for(seq, want);
            tokens[seq] = want;
          } else {
            EXPECT_THROW(bm.allocate_for(seq, want), Error);
          }
          break;
        }
        case 2:
          bm.free(seq);
          tokens.erase(seq);
          break;
        case 3: {  // share another sequence's full blocks
          const int64_t other = rng() % 12;
          if (other == seq || bm.has_table(seq) || !bm.has_table(other)) break;
          const auto table = bm.block_table(other);
          const size_t full = static_cast<size_t>(tokens[other] / block_size);
          bm.share(seq, table.first(std::min(full, table.size())));
          tokens[seq] = static_cast<int64_t>(std::min(full, table.size())) * block_size;
          break;
        }
      }
      // Invariants: every table covers its tokens; reference counts equal the number of
      // tables holding a block; free + held = usable; block 0 is in no table.
      std::map<int32_t, int32_t> holders;
      for (const auto& [s, n] : tokens) {
        const auto table = bm.block_table(s);
        ASSERT_GE(static_cast<int64_t>(table.size()) * block_size, n);
        for (int32_t b : table) {
          ASSERT_NE(b, BlockManager::kNullBlock);
          ++holders[b];
        }
      }
      for (const auto& [b, count] : holders) ASSERT_EQ(bm.ref_count(b), count);
      ASSERT_EQ(bm.num_free() + static_cast<int32_t>(holders.size()), bm.num_usable());
    }
    for (int64_t seq = 0; seq < 12; ++seq) bm.free(seq);
    EXPECT_EQ(bm.num_free(), num_blocks - 1);
    EXPECT_EQ(bm.num_sequences(), 0);
  }
}

}  // namespace
}  // namespace l2kv
