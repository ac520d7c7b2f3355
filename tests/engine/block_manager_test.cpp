// The block manager's bookkeeping: allocation and growth, reference counts, the reserved null
// block, and no leaks after any sequence of operations.
#include "l2kv/engine/block_manager.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>

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

TEST(BlockManager, ReferenceCountsAndSharing) {
  BlockManager bm(6, 2);
  bm.allocate_for(1, 6);  // 3 blocks
  const std::vector<int32_t> parent(bm.block_table(1).begin(), bm.block_table(1).end());
  bm.share(2, {{parent[0], parent[1]}});  // a prefix of two full blocks
  EXPECT_EQ(bm.ref_count(parent[0]), 2);
  EXPECT_EQ(bm.ref_count(parent[2]), 1);
  EXPECT_THROW(bm.share(2, {parent}), Error);  // already has a table
  bm.allocate_for(2, 5);                       // grows past the shared prefix
  EXPECT_EQ(bm.block_table(2).size(), 3u);
  EXPECT_EQ(bm.num_free(), 1);

  bm.free(1);  // shared blocks stay with sequence 2
  EXPECT_EQ(bm.num_free(), 2);
  EXPECT_EQ(bm.ref_count(parent[0]), 1);
  EXPECT_THROW(bm.share(3, {{parent[2]}}), Error);               // free block
  EXPECT_THROW(bm.share(3, {{parent[0]}, {parent[0]}}), Error);  // one group, two tables
  // Caching is off: nothing is cached, nothing becomes evictable.
  EXPECT_FALSE(bm.cache_block(parent[0], hash_block(std::nullopt, 0, std::vector<int32_t>{1, 2})));
  bm.free(2);
  EXPECT_EQ(bm.num_free(), 5);
  EXPECT_EQ(bm.num_evictable(), 0);
  EXPECT_FALSE(bm.block_hash(parent[0]).has_value());
  EXPECT_THROW(bm.ref_count(6), Error);
  bm.check_invariants();
}

std::string hex(const std::array<uint8_t, 32>& d) {
  std::string s;
  const char* digits = "0123456789abcdef";
  for (uint8_t b : d) {
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

std::string sha256_hex(const std::string& text) {
  return hex(sha256(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

TEST(BlockHash, Sha256MatchesTheStandardsVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // 56 bytes: the length needs a second padding block.
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(BlockHash, DependsOnParentTokensAndExtraKey) {
  const std::vector<int32_t> a{1, 2, 3, 4}, b{1, 2, 3, 5};
  const BlockHash root = hash_block(std::nullopt, 0, a);
  EXPECT_EQ(root, hash_block(std::nullopt, 0, a));
  EXPECT_NE(root, hash_block(std::nullopt, 0, b));
  EXPECT_NE(root, hash_block(std::nullopt, 1, a));
  EXPECT_NE(root, hash_block(BlockHash{}, 0, a));  // a zero parent is still a parent
  EXPECT_NE(hash_block(root, 0, a), hash_block(hash_block(std::nullopt, 0, b), 0, a));
  EXPECT_NE(root.hi, 0u);
  EXPECT_NE(root.lo, 0u);
  // A cache salt is the first block's parent: same salt, same chain; another salt, another.
  EXPECT_EQ(salt_hash("tenant-a"), salt_hash("tenant-a"));
  EXPECT_NE(salt_hash("tenant-a"), salt_hash("tenant-b"));
  EXPECT_NE(hash_block(salt_hash("tenant-a"), 0, a), root);
  EXPECT_NE(hash_block(salt_hash("tenant-a"), 0, a), hash_block(salt_hash("tenant-b"), 0, a));
}

// Hashes of the full blocks of `tokens`, chained.
std::vector<BlockHash> chain(const std::vector<int32_t>& tokens, int32_t block_size) {
  std::vector<BlockHash> out;
  for (size_t i = 0; i + static_cast<size_t>(block_size) <= tokens.size(); i += block_size) {
    std::optional<BlockHash> parent;
    if (!out.empty()) parent = out.back();
    out.push_back(hash_block(parent, 0, std::span<const int32_t>(tokens).subspan(i, block_size)));
  }
  return out;
}

TEST(BlockManager, FreedCachedBlocksStayFindableUntilEvicted) {
  BlockManager bm(6, 2, /*enable_caching=*/true);  // 5 usable blocks of 2 tokens
  const std::vector<int32_t> tokens{7, 8, 9, 10, 11};
  const std::vector<BlockHash> h = chain(tokens, 2);  // 2 full blocks
  bm.allocate_for(1, 5);
  const std::vector<int32_t> t1(bm.block_table(1).begin(), bm.block_table(1).end());
  EXPECT_TRUE(bm.cache_block(t1[0], h[0]));
  EXPECT_TRUE(bm.cache_block(t1[1], h[1]));
  EXPECT_FALSE(bm.cache_block(t1[1], h[1]));  // cached already
  EXPECT_EQ(bm.find_cached_prefix(h).tables, (std::vector<std::vector<int32_t>>{{t1[0], t1[1]}}));
  EXPECT_EQ(bm.find_cached_prefix(h).num_blocks, 2);

  // Another sequence computing the same block at once keeps its own, uncached.
  bm.allocate_for(2, 2);
  EXPECT_FALSE(bm.cache_block(bm.block_table(2)[0], h[0]));
  EXPECT_FALSE(bm.block_hash(bm.block_table(2)[0]).has_value());
  bm.free(2);
  EXPECT_EQ(bm.num_evictable(), 0);

  bm.free(1);  // the two cached blocks become evictable, the partial third is free
  EXPECT_EQ(bm.num_free(), 5);
  EXPECT_EQ(bm.num_evictable(), 2);
  EXPECT_EQ(bm.find_cached_prefix(h).num_blocks, 2);
  bm.check_invariants();

  // A hit takes them back out of the LRU.
  EXPECT_TRUE(bm.can_allocate(3, 5, bm.find_cached_prefix(h)));
  EXPECT_FALSE(bm.can_allocate(3, 11, bm.find_cached_prefix(h)));  // 6 blocks > 5
  bm.share(3, bm.find_cached_prefix(h).tables);
  EXPECT_EQ(bm.num_evictable(), 0);
  EXPECT_EQ(bm.ref_count(t1[0]), 1);
  bm.allocate_for(3, 5);
  EXPECT_EQ(bm.num_free(), 2);
  bm.free(3);
  EXPECT_EQ(bm.num_evictable(), 2);

  // Allocation takes the 3 free blocks before evicting; the 4th evicts the LRU head, which is
  // the sequence's last cached block (released first), so the prefix's first block survives.
  bm.allocate_for(4, 6);
  EXPECT_EQ(bm.num_evictable(), 2);
  bm.allocate_for(4, 8);
  EXPECT_EQ(bm.num_evictable(), 1);
  EXPECT_FALSE(bm.block_hash(t1[1]).has_value());
  EXPECT_EQ(bm.find_cached_prefix(h).tables, std::vector<std::vector<int32_t>>{{t1[0]}});
  bm.allocate_for(4, 10);
  EXPECT_EQ(bm.num_evictable(), 0);
  EXPECT_TRUE(bm.find_cached_prefix(h).empty());
  EXPECT_THROW(bm.allocate_for(4, 11), Error);
  bm.check_invariants();
  bm.free(4);
  EXPECT_EQ(bm.num_free(), 5);
  bm.check_invariants();
}

TEST(BlockManager, HeldCachedBlocksAreNeverEvicted) {
  BlockManager bm(4, 1, true);  // 3 usable blocks of 1 token
  bm.allocate_for(1, 1);
  const int32_t held = bm.block_table(1)[0];
  ASSERT_TRUE(bm.cache_block(held, hash_block(std::nullopt, 0, std::vector<int32_t>{5})));
  bm.allocate_for(2, 2);
  EXPECT_FALSE(bm.can_allocate(3, 1));
  EXPECT_THROW(bm.allocate_for(3, 1), Error);
  EXPECT_EQ(bm.ref_count(held), 1);
  EXPECT_TRUE(bm.block_hash(held).has_value());
  bm.check_invariants();
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
          const auto shared = table.first(std::min(full, table.size()));
          bm.share(seq, {{shared.begin(), shared.end()}});
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

// A randomized mix (fixed seed) of growth with caching of the filled blocks, prefix hits,
// frees and eviction pressure: after every operation the invariants hold, every block a hit
// returns holds exactly the tokens asked for, a held block never changes hands or content, and
// at the end every block is free.
TEST(BlockManager, RandomMixesWithCachingNeverLeakNorEvictHeldBlocks) {
  std::mt19937 rng(2026);
  for (int trial = 0; trial < 30; ++trial) {
    const int32_t num_blocks = 2 + static_cast<int32_t>(rng() % 30);
    const int32_t bs = 1 + static_cast<int32_t>(rng() % 4);
    BlockManager bm(num_blocks, bs, true);
    struct Seq {
      std::vector<int32_t> tokens;
      std::vector<int32_t> table;  // what the test expects block_table to be
      int32_t cached = 0;          // full blocks offered to the cache
    };
    std::map<int64_t, Seq> seqs;
    int64_t next_seq = 0;
    // What each cached block holds: its chain hash, checked against block_hash.
    auto offer_full_blocks = [&](int64_t id, Seq& q) {
      const std::vector<BlockHash> h = chain(q.tokens, bs);
      for (; q.cached < static_cast<int32_t>(h.size()); ++q.cached) {
        const int32_t b = q.table[static_cast<size_t>(q.cached)];
        const bool fresh = bm.cache_block(b, h[static_cast<size_t>(q.cached)]);
        if (fresh) {
          EXPECT_EQ(bm.block_hash(b), h[static_cast<size_t>(q.cached)]) << id;
        }
      }
    };
    for (int op = 0; op < 400; ++op) {
      const uint32_t kind = rng() % 10;
      if (kind < 4 && !seqs.empty()) {  // grow a sequence and cache what it filled
        auto it = seqs.begin();
        std::advance(it, rng() % seqs.size());
        Seq& q = it->second;
        const size_t extra = 1 + rng() % (2 * bs);
        std::vector<int32_t> grown = q.tokens;
        for (size_t i = 0; i < extra; ++i) grown.push_back(static_cast<int32_t>(rng() % 3));
        if (!bm.can_allocate(it->first, static_cast<int64_t>(grown.size()))) {
          EXPECT_THROW(bm.allocate_for(it->first, static_cast<int64_t>(grown.size())), Error);
        } else {
          bm.allocate_for(it->first, static_cast<int64_t>(grown.size()));
          const auto t = bm.block_table(it->first);
          ASSERT_TRUE(std::equal(q.table.begin(), q.table.end(), t.begin()))
              << "a growing table changed its existing blocks";
          q.table.assign(t.begin(), t.end());
          q.tokens = std::move(grown);
          offer_full_blocks(it->first, q);
        }
      } else if (kind < 7) {  // a new sequence: a prefix of another one's tokens, or random
        std::vector<int32_t> tokens;
        if (!seqs.empty() && rng() % 4 != 0) {
          auto it = seqs.begin();
          std::advance(it, rng() % seqs.size());
          tokens.assign(it->second.tokens.begin(),
                        it->second.tokens.begin() +
                            static_cast<std::ptrdiff_t>(rng() % (it->second.tokens.size() + 1)));
        }
        const size_t tail = 1 + rng() % (2 * bs);
        for (size_t i = 0; i < tail; ++i) tokens.push_back(static_cast<int32_t>(rng() % 3));
        const std::vector<BlockHash> h = chain(tokens, bs);
        const size_t most = (tokens.size() - 1) / static_cast<size_t>(bs);
        const std::vector<int32_t> prefix =
            bm.find_cached_prefix(std::span<const BlockHash>(h).first(most)).tables.at(0);
        ASSERT_LE(prefix.size(), most);
        for (size_t i = 0; i < prefix.size(); ++i) ASSERT_EQ(bm.block_hash(prefix[i]), h[i]);
        const int64_t id = next_seq++;
        const auto len = static_cast<int64_t>(tokens.size());
        const CachedPrefix hit{static_cast<int32_t>(prefix.size()), {prefix}};
        if (!bm.can_allocate(id, len, hit)) continue;
        bm.share(id, hit.tables);
        bm.allocate_for(id, len);
        Seq q{tokens, {}, static_cast<int32_t>(prefix.size())};
        const auto t = bm.block_table(id);
        ASSERT_TRUE(std::equal(prefix.begin(), prefix.end(), t.begin()));
        q.table.assign(t.begin(), t.end());
        offer_full_blocks(id, q);
        seqs.emplace(id, std::move(q));
      } else if (!seqs.empty()) {  // finish, abort or preempt: all the same to the blocks
        auto it = seqs.begin();
        std::advance(it, rng() % seqs.size());
        bm.free(it->first);
        seqs.erase(it);
      }
      ASSERT_NO_THROW(bm.check_invariants()) << "trial " << trial << " op " << op;
      for (const auto& [id, q] : seqs) {
        const auto t = bm.block_table(id);
        ASSERT_TRUE(std::equal(t.begin(), t.end(), q.table.begin(), q.table.end()))
            << "sequence " << id << "'s table changed behind its back";
        const std::vector<BlockHash> h = chain(q.tokens, bs);
        for (size_t i = 0; i < q.table.size(); ++i) {
          const auto held = bm.block_hash(q.table[i]);
          if (held) {
            ASSERT_TRUE(i < h.size() && *held == h[i]) << "block content changed";
          }
        }
      }
    }
    for (const auto& [id, q] : seqs) bm.free(id);
    EXPECT_EQ(bm.num_free(), num_blocks - 1);
    EXPECT_EQ(bm.num_sequences(), 0);
    bm.check_invariants();
  }
}

}  // namespace
}  // namespace l2kv
