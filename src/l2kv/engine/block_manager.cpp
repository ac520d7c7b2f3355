#include "l2kv/engine/block_manager.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

// SHA-256 (FIPS 180-4), written out: no hashing library is a dependency of l2kv.
constexpr uint32_t kSha256K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

uint32_t rotr(uint32_t x, int n) {
  return (x >> n) | (x << (32 - n));
}

void sha256_block(uint32_t state[8], const uint8_t* p) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i)
    w[i] = (uint32_t{p[4 * i]} << 24) | (uint32_t{p[4 * i + 1]} << 16) |
           (uint32_t{p[4 * i + 2]} << 8) | uint32_t{p[4 * i + 3]};
  for (int i = 16; i < 64; ++i) {
    const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
  uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
  for (int i = 0; i < 64; ++i) {
    const uint32_t t1 =
        h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + kSha256K[i] + w[i];
    const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
  state[4] += e;
  state[5] += f;
  state[6] += g;
  state[7] += h;
}

void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

// The cache key of a group's block: its tokens' hash with the group mixed in (group 0's is the
// hash itself). Groups hold different layers of the same tokens, so each needs its own key; an
// odd multiplier keeps the keys of different groups distinct for the same hash.
BlockHash group_key(const BlockHash& hash, int32_t group) {
  return {hash.hi ^ (static_cast<uint64_t>(group) * 0x9E3779B97F4A7C15ull), hash.lo};
}

}  // namespace

std::array<uint8_t, 32> sha256(const uint8_t* data, size_t size) {
  uint32_t state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  size_t done = 0;
  for (; done + 64 <= size; done += 64) sha256_block(state, data + done);
  // The tail, the 0x80 marker and the message length in bits, in one or two blocks.
  uint8_t tail[128] = {};
  const size_t rest = size - done;
  if (rest > 0) std::memcpy(tail, data + done, rest);
  tail[rest] = 0x80;
  const size_t tail_size = rest + 9 <= 64 ? 64 : 128;
  const uint64_t bits = static_cast<uint64_t>(size) * 8;
  for (int i = 0; i < 8; ++i) tail[tail_size - 1 - i] = static_cast<uint8_t>(bits >> (8 * i));
  for (size_t off = 0; off < tail_size; off += 64) sha256_block(state, tail + off);
  std::array<uint8_t, 32> digest{};
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) digest[4 * i + j] = static_cast<uint8_t>(state[i] >> (24 - 8 * j));
  return digest;
}

namespace {
BlockHash first_128_bits(const std::array<uint8_t, 32>& d) {
  BlockHash h;
  for (int i = 0; i < 8; ++i) {
    h.hi = (h.hi << 8) | d[i];
    h.lo = (h.lo << 8) | d[8 + i];
  }
  return h;
}
}  // namespace

BlockHash salt_hash(std::string_view salt) {
  // Its first byte (2) is never hash_block's (0 or 1): a salt cannot pose as a block.
  std::vector<uint8_t> bytes = {2};
  bytes.insert(bytes.end(), salt.begin(), salt.end());
  return first_128_bits(sha256(bytes.data(), bytes.size()));
}

BlockHash hash_block(const std::optional<BlockHash>& parent, uint64_t extra_key,
                     std::span<const int32_t> tokens) {
  // One byte says whether there is a parent, so a first block never equals a child block
  // whose parent hash happens to be all zeros.
  std::vector<uint8_t> bytes;
  bytes.reserve(1 + 16 + 8 + 4 * tokens.size());
  bytes.push_back(parent ? 1 : 0);
  put_u64(bytes, parent ? parent->hi : 0);
  put_u64(bytes, parent ? parent->lo : 0);
  put_u64(bytes, extra_key);
  for (int32_t t : tokens)
    for (int i = 0; i < 4; ++i)
      bytes.push_back(static_cast<uint8_t>(static_cast<uint32_t>(t) >> (8 * i)));
  return first_128_bits(sha256(bytes.data(), bytes.size()));
}

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size, bool enable_caching,
                           std::vector<int32_t> group_windows)
    : block_size_(block_size), caching_(enable_caching), windows_(std::move(group_windows)) {
  if (block_size < 1)
    throw Error("block size must be at least 1, got " + std::to_string(block_size));
  if (windows_.empty()) throw Error("a KV pool needs at least one KV cache group");
  for (int32_t w : windows_)
    if (w < 0)
      throw Error("a KV cache group's window must not be negative, got " + std::to_string(w));
  if (num_blocks < 2)
    throw Error("a KV pool needs at least 2 blocks (block 0 is reserved), got " +
                std::to_string(num_blocks));
  const auto n = static_cast<size_t>(num_blocks);
  ref_counts_.assign(n, 0);
  hashes_.resize(n);
  lru_prev_.assign(n, kNone);
  lru_next_.assign(n, kNone);
  in_lru_.assign(n, false);
  if (caching_) cached_.reserve(n);
  free_list_.reserve(n - 1);
  for (int32_t b = num_blocks - 1; b > kNullBlock; --b) free_list_.push_back(b);
}

int32_t BlockManager::blocks_for(int64_t num_tokens) const {
  return static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
}

int64_t BlockManager::blocks_to_hold(int64_t num_tokens, int64_t chunk_tokens) const {
  int64_t blocks = 0;
  for (int32_t w : windows_) {
    // A windowed group holds the chunk's blocks and the window before its first query.
    const int64_t most =
        w == 0 ? blocks_for(num_tokens)
               : std::min<int64_t>(blocks_for(num_tokens), blocks_for(chunk_tokens + w - 1) + 1);
    blocks += most;
  }
  return blocks;
}

int32_t BlockManager::first_block_in_window(int32_t group, int64_t position) const {
  const int32_t w = windows_[static_cast<size_t>(group)];
  if (w == 0) return 0;
  return static_cast<int32_t>(std::max<int64_t>(0, position - w + 1) / block_size_);
}

int32_t BlockManager::blocks_short(int64_t seq, int64_t total_tokens) const {
  int32_t short_by = 0;
  for (int32_t g = 0; g < num_groups(); ++g)
    short_by +=
        std::max(0, blocks_for(total_tokens) - static_cast<int32_t>(block_table(seq, g).size()));
  return short_by;
}

bool BlockManager::can_allocate(int64_t seq, int64_t total_tokens,
                                const CachedPrefix& prefix) const {
  int64_t needed = 0;
  // Taking an evictable prefix block takes it out of what new blocks can come from.
  int64_t available = num_free();
  for (int32_t g = 0; g < num_groups(); ++g) {
    const std::vector<int32_t>* shared = prefix.tables.size() > static_cast<size_t>(g)
                                             ? &prefix.tables[static_cast<size_t>(g)]
                                             : nullptr;
    const int64_t have =
        static_cast<int64_t>(block_table(seq, g).size() + (shared ? shared->size() : 0));
    needed += std::max<int64_t>(0, blocks_for(total_tokens) - have);
    if (shared)
      for (int32_t block : *shared)
        if (block != kNullBlock && ref_counts_[block] == 0) --available;
  }
  return needed <= available;
}

int32_t BlockManager::take_block() {
  int32_t block;
  if (!free_list_.empty()) {
    block = free_list_.back();
    free_list_.pop_back();
  } else {
    block = lru_head_;  // callers checked num_free(), so the LRU is not empty
    lru_remove(block);
    cached_.erase(*hashes_[block]);
    hashes_[block].reset();
  }
  ref_counts_[block] = 1;
  return block;
}

void BlockManager::allocate_for(int64_t seq, int64_t total_tokens) {
  const int32_t short_by = blocks_short(seq, total_tokens);
  if (short_by > num_free())
    throw Error("KV pool exhausted: sequence " + std::to_string(seq) + " needs " +
                std::to_string(short_by) + " more blocks, " + std::to_string(num_free()) +
                " are free");
  SequenceTables& seq_tables = tables_[seq];
  seq_tables.tables.resize(windows_.size());
  seq_tables.first_kept.resize(windows_.size(), 0);
  const int32_t need = blocks_for(total_tokens);
  for (std::vector<int32_t>& table : seq_tables.tables)
    while (static_cast<int32_t>(table.size()) < need) table.push_back(take_block());
}

void BlockManager::share(int64_t seq, const std::vector<std::vector<int32_t>>& tables) {
  if (has_table(seq))
    throw Error("BlockManager::share: sequence " + std::to_string(seq) + " already has blocks");
  if (tables.size() != windows_.size())
    throw Error("BlockManager::share: " + std::to_string(tables.size()) + " tables for " +
                std::to_string(windows_.size()) + " KV cache groups");
  for (const std::vector<int32_t>& table : tables)
    for (int32_t block : table) {
      check_block(block);
      if (block != kNullBlock && ref_counts_[block] == 0 && !in_lru_[block])
        throw Error("BlockManager::share: block " + std::to_string(block) + " is free");
    }
  // Each table's leading null blocks (a windowed group's entries left behind) are its first
  // kept entry; nulls anywhere else are refused.
  std::vector<int32_t> first_kept;
  for (size_t g = 0; g < tables.size(); ++g) {
    const auto first_real =
        std::find_if(tables[g].begin(), tables[g].end(), [](int32_t b) { return b != kNullBlock; });
    if (std::find(first_real, tables[g].end(), kNullBlock) != tables[g].end() ||
        (windows_[g] == 0 && first_real != tables[g].begin()))
      throw Error("BlockManager::share: null blocks may only lead a windowed group's table");
    first_kept.push_back(static_cast<int32_t>(first_real - tables[g].begin()));
  }
  SequenceTables& seq_tables = tables_[seq];
  seq_tables.tables = tables;
  seq_tables.first_kept = std::move(first_kept);
  for (const std::vector<int32_t>& table : tables)
    for (int32_t block : table) {
      if (block == kNullBlock) continue;
      if (ref_counts_[block] == 0) lru_remove(block);
      ++ref_counts_[block];
    }
}

void BlockManager::release(int32_t block) {
  if (--ref_counts_[block] > 0) return;
  if (caching_ && hashes_[block]) {
    lru_push_back(block);
  } else {
    hashes_[block].reset();
    free_list_.push_back(block);
  }
}

void BlockManager::free_outside_windows(int64_t seq, int64_t next_position) {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  SequenceTables& t = it->second;
  for (int32_t g = 0; g < num_groups(); ++g) {
    if (windows_[static_cast<size_t>(g)] == 0) continue;
    std::vector<int32_t>& table = t.tables[static_cast<size_t>(g)];
    int32_t& first_kept = t.first_kept[static_cast<size_t>(g)];
    const int32_t end =
        std::min(first_block_in_window(g, next_position), static_cast<int32_t>(table.size()));
    for (; first_kept < end; ++first_kept) {
      int32_t& block = table[static_cast<size_t>(first_kept)];
      if (block == kNullBlock) continue;
      release(block);
      block = kNullBlock;
    }
  }
}

void BlockManager::free(int64_t seq) {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  // Released in reverse: the front of a table is the likelier prefix of a later request, so
  // its back goes to the LRU (and to eviction) first.
  for (const std::vector<int32_t>& table : it->second.tables)
    for (auto block = table.rbegin(); block != table.rend(); ++block)
      if (*block != kNullBlock) release(*block);
  tables_.erase(it);
}

std::span<const int32_t> BlockManager::block_table(int64_t seq, int32_t group) const {
  const auto it = tables_.find(seq);
  if (it == tables_.end() || group < 0 || group >= static_cast<int32_t>(it->second.tables.size()))
    return {};
  return it->second.tables[static_cast<size_t>(group)];
}

int32_t BlockManager::ref_count(int32_t block) const {
  check_block(block);
  return ref_counts_[block];
}

bool BlockManager::cache_block(int32_t block, const BlockHash& hash, int32_t group) {
  check_block(block);
  if (ref_counts_[block] == 0)
    throw Error("BlockManager::cache_block: block " + std::to_string(block) + " is not held");
  if (group < 0 || group >= num_groups())
    throw Error("BlockManager::cache_block: no KV cache group " + std::to_string(group));
  if (!caching_ || hashes_[block]) return false;
  const BlockHash key = group_key(hash, group);
  if (!cached_.emplace(key, block).second) return false;
  hashes_[block] = key;
  return true;
}

std::optional<BlockHash> BlockManager::block_hash(int32_t block) const {
  check_block(block);
  return hashes_[block];
}

CachedPrefix BlockManager::find_cached_prefix(std::span<const BlockHash> hashes) const {
  CachedPrefix prefix;
  if (!caching_) return prefix;
  // Each group's cached block for each hash (kNone where it misses) and the run of hits that
  // ends at each; then the longest prefix every group can resume after.
  const auto n = static_cast<int32_t>(hashes.size());
  std::vector<std::vector<int32_t>> found(windows_.size()), run(windows_.size());
  for (int32_t g = 0; g < num_groups(); ++g) {
    std::vector<int32_t>& blocks = found[static_cast<size_t>(g)];
    std::vector<int32_t>& hits = run[static_cast<size_t>(g)];
    for (int32_t i = 0; i < n; ++i) {
      const auto it = cached_.find(group_key(hashes[static_cast<size_t>(i)], g));
      blocks.push_back(it == cached_.end() ? kNone : it->second);
      hits.push_back(blocks.back() == kNone ? 0 : (i > 0 ? hits.back() : 0) + 1);
    }
  }
  int32_t length = n;
  for (; length > 0; --length) {
    bool every_group = true;
    for (int32_t g = 0; g < num_groups() && every_group; ++g) {
      const int32_t first = first_block_in_window(g, static_cast<int64_t>(length) * block_size_);
      every_group = run[static_cast<size_t>(g)][static_cast<size_t>(length - 1)] >= length - first;
    }
    if (every_group) break;
  }
  prefix.num_blocks = length;
  for (int32_t g = 0; g < num_groups(); ++g) {
    const int32_t first = first_block_in_window(g, static_cast<int64_t>(length) * block_size_);
    std::vector<int32_t> table(static_cast<size_t>(length), kNullBlock);
    for (int32_t i = first; i < length; ++i)
      table[static_cast<size_t>(i)] = found[static_cast<size_t>(g)][static_cast<size_t>(i)];
    prefix.tables.push_back(std::move(table));
  }
  return prefix;
}

void BlockManager::lru_push_back(int32_t block) {
  lru_prev_[block] = lru_tail_;
  lru_next_[block] = kNone;
  if (lru_tail_ != kNone) {
    lru_next_[lru_tail_] = block;
  } else {
    lru_head_ = block;
  }
  lru_tail_ = block;
  in_lru_[block] = true;
  ++num_evictable_;
}

void BlockManager::lru_remove(int32_t block) {
  const int32_t prev = lru_prev_[block], next = lru_next_[block];
  if (prev != kNone) {
    lru_next_[prev] = next;
  } else {
    lru_head_ = next;
  }
  if (next != kNone) {
    lru_prev_[next] = prev;
  } else {
    lru_tail_ = prev;
  }
  lru_prev_[block] = lru_next_[block] = kNone;
  in_lru_[block] = false;
  --num_evictable_;
}

void BlockManager::check_invariants() const {
  auto fail = [](const std::string& what) { throw Error("BlockManager invariant: " + what); };
  const auto n = static_cast<size_t>(num_blocks());
  std::vector<int32_t> holders(n, 0);
  for (const auto& [seq, seq_tables] : tables_) {
    if (seq_tables.tables.size() != windows_.size())
      fail("sequence " + std::to_string(seq) + " has " + std::to_string(seq_tables.tables.size()) +
           " tables for " + std::to_string(windows_.size()) + " groups");
    for (size_t g = 0; g < seq_tables.tables.size(); ++g)
      for (size_t i = 0; i < seq_tables.tables[g].size(); ++i) {
        const int32_t b = seq_tables.tables[g][i];
        // The null block exactly before first_kept: a windowed group's entries left behind.
        const bool left = i < static_cast<size_t>(seq_tables.first_kept[g]);
        if (b < kNullBlock || b >= num_blocks() || (b == kNullBlock) != left ||
            (left && windows_[g] == 0))
          fail("sequence " + std::to_string(seq) + " group " + std::to_string(g) + " entry " +
               std::to_string(i) + " holds block " + std::to_string(b));
        if (b != kNullBlock) ++holders[static_cast<size_t>(b)];
      }
  }
  std::vector<int> places(n, 0);
  for (int32_t b : free_list_) {
    ++places[static_cast<size_t>(b)];
    if (hashes_[b]) fail("free block " + std::to_string(b) + " keeps a hash");
  }
  int32_t walked = 0;
  for (int32_t b = lru_head_, prev = kNone; b != kNone; prev = b, b = lru_next_[b]) {
    if (lru_prev_[b] != prev || !in_lru_[b]) fail("LRU links broken at block " + std::to_string(b));
    if (!hashes_[b]) fail("evictable block " + std::to_string(b) + " has no hash");
    ++places[static_cast<size_t>(b)];
    if (++walked > num_blocks()) fail("LRU has a cycle");
  }
  if (walked != num_evictable_) fail("LRU length differs from its count");
  for (size_t b = 1; b < n; ++b) {
    if (ref_counts_[b] != holders[b])
      fail("block " + std::to_string(b) + " has reference count " + std::to_string(ref_counts_[b]) +
           " and " + std::to_string(holders[b]) + " holders");
    if (holders[b] > 0) ++places[b];
    if (places[b] != 1)
      fail("block " + std::to_string(b) + " is in " + std::to_string(places[b]) +
           " of free list, LRU and held");
    if (hashes_[b]) {
      const auto it = cached_.find(*hashes_[b]);
      if (it == cached_.end() || it->second != static_cast<int32_t>(b))
        fail("block " + std::to_string(b) + "'s hash is not indexed to it");
    }
  }
  if (ref_counts_[kNullBlock] != 0 || places[kNullBlock] != 0) fail("the null block is in use");
  for (const auto& [hash, b] : cached_)
    if (!hashes_[b] || !(*hashes_[b] == hash)) fail("the index names a block without its hash");
}

void BlockManager::check_block(int32_t block) const {
  if (block < 0 || block >= num_blocks())
    throw Error("block " + std::to_string(block) + " outside a pool of " +
                std::to_string(num_blocks()) + " blocks");
}

}  // namespace l2kv
