#include "l2kv/kv_cache/paged_kv.h"

#include <gtest/gtest.h>

#include <vector>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

struct ValidCache {
  std::vector<int32_t> lens{5, 33};
  std::vector<int32_t> table{0, 1, 2, 3, 4, 5};  // 2 sequences x 3 blocks
  int dummy = 0;
  PagedKvCache kv() {
    PagedKvCache kv;
    kv.k_pool = kv.v_pool = &dummy;
    kv.block_table = table.data();
    kv.seq_lens = lens.data();
    kv.num_blocks = 6;
    kv.block_size = 16;
    kv.num_kv_heads = 2;
    kv.head_dim = 64;
    kv.batch_size = 2;
    kv.max_blocks_per_seq = 3;
    return kv;
  }
};

void expect_rejected(const PagedKvCache& kv, std::span<const int32_t> lens,
                     std::span<const int32_t> table, const std::string& fragment) {
  try {
    validate_paged_kv(kv, lens, table);
    ADD_FAILURE() << "expected an error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(PagedKv, AcceptsValidDescriptor) {
  ValidCache c;
  EXPECT_NO_THROW(validate_paged_kv(c.kv(), c.lens, c.table));
}

TEST(PagedKv, RejectsZeroAndUnsupportedSizes) {
  ValidCache c;
  auto kv = c.kv();
  kv.num_kv_heads = 0;
  expect_rejected(kv, c.lens, c.table, "num_kv_heads");
  kv = c.kv();
  kv.head_dim = 0;
  expect_rejected(kv, c.lens, c.table, "head_dim");
  kv = c.kv();
  kv.num_blocks = 0;
  expect_rejected(kv, c.lens, c.table, "num_blocks");
  kv = c.kv();
  kv.block_size = 8;
  expect_rejected(kv, c.lens, c.table, "block_size must be 16, 32 or 64");
  kv = c.kv();
  kv.batch_size = 0;
  expect_rejected(kv, c.lens, c.table, "batch_size");
}

TEST(PagedKv, RejectsLengthsBeyondTableOrEmpty) {
  ValidCache c;
  c.lens[1] = 49;  // 3 blocks of 16 hold 48
  expect_rejected(c.kv(), c.lens, c.table, "beyond its block table");
  c.lens[1] = 0;
  expect_rejected(c.kv(), c.lens, c.table, "at least one cached token");
  std::vector<int32_t> one_len{5};
  expect_rejected(c.kv(), one_len, c.table, "expected 2 sequence lengths");
}

TEST(PagedKv, RejectsBlockIdsOutsidePool) {
  ValidCache c;
  c.table[3] = 6;  // sequence 1, block 0
  expect_rejected(c.kv(), c.lens, c.table, "outside the pool");
  c.table[3] = -1;
  expect_rejected(c.kv(), c.lens, c.table, "outside the pool");
  // Entries past a sequence's length are not read and may hold anything.
  ValidCache d;
  d.table[1] = -1;  // sequence 0 has 5 tokens: only block 0 is used
  EXPECT_NO_THROW(validate_paged_kv(d.kv(), d.lens, d.table));
}

TEST(PagedKv, OffsetsFollowEachLayout) {
  ValidCache c;
  auto kv = c.kv();
  kv.layout = KvLayout::kNHD;  // [block][token][head][dim]
  EXPECT_EQ(kv.offset(3, 5, 1), ((3 * 16 + 5) * 2 + 1) * 64);
  kv.layout = KvLayout::kHND;  // [block][head][token][dim]
  EXPECT_EQ(kv.offset(3, 5, 1), ((3 * 2 + 1) * 16 + 5) * 64);
  EXPECT_EQ(kv.pool_bytes(), int64_t{6} * 16 * 2 * 64 * 2);
}

}  // namespace
}  // namespace l2kv
