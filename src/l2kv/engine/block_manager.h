// The KV block manager: which physical blocks of the paged pool hold which sequence's tokens.
// Host bookkeeping only (free list, reference counts, per-sequence block tables, a content
// hash per full block); it never touches a device. The runner owns the pool itself.
//
// Block 0 is the null block: it is never handed out. The CUDA runner pads graph batches with
// rows whose block tables point at block 0 (they keep no K/V), and its warm-up forward at start
// writes there, so neither touches a block some sequence owns. Usable blocks are 1 .. num_blocks
// - 1.
//
// Prefix caching (vLLM V1's design): a full block a sequence has computed can be cached under
// its content hash (cache_block). A cached block whose last holder lets go keeps its hash and
// joins an LRU of evictable blocks instead of the free list; a later sequence with the same
// prefix finds it (find_cached_prefix) and takes it back (share). Allocation takes blocks from
// the free list first, then evicts the least recently released evictable block, which forgets
// its hash. A block some sequence holds is never evicted. Free and evictable blocks together
// are what num_free() counts: both can be handed out.
//
// KV cache groups (kv_cache_groups.h): a model whose layers mix full attention with sliding
// windows keeps one table per group per sequence, all from this one pool. A windowed group's
// table keeps its length, but entries that no query to come can read (wholly before the window
// of the next position computed) go back to the pool and become the null block
// (free_outside_windows). Prefix caching caches every group's blocks; a hit needs every block
// of a full-attention group and, of a windowed group, the blocks inside the window of the
// position it resumes at.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace l2kv {

// The identity of a full block's content: the first 128 bits of SHA-256 over its parent's hash,
// an extra key (anything else that changes the block's K/V; 0 today) and its token ids. A
// cryptographic hash, so two different prefixes never share cached K/V in practice, even when
// a client picks the tokens.
struct BlockHash {
  uint64_t hi = 0, lo = 0;
  bool operator==(const BlockHash&) const = default;
};

// The hash of a block holding `tokens` after the block hashed `parent` (nullopt for the first
// block of a sequence).
BlockHash hash_block(const std::optional<BlockHash>& parent, uint64_t extra_key,
                     std::span<const int32_t> tokens);

// The parent a sequence's first block is hashed under when its request carries a cache salt
// (vLLM's cache_salt): requests with different salts (or one without) never share cached blocks.
BlockHash salt_hash(std::string_view salt);

// SHA-256 of `size` bytes (exposed for its test against the standard's vectors).
std::array<uint8_t, 32> sha256(const uint8_t* data, size_t size);

// A prefix of cached blocks a sequence can start from: `num_blocks` blocks of tokens, and for
// each group the blocks that hold them (the null block where a windowed group's window has left
// them).
struct CachedPrefix {
  int32_t num_blocks = 0;
  std::vector<std::vector<int32_t>> tables;  // [group]
  bool empty() const { return num_blocks == 0; }
};

class BlockManager {
 public:
  static constexpr int32_t kNullBlock = 0;

  // A pool of `num_blocks` blocks (the null block included) of `block_size` tokens each, with
  // prefix caching on or off, for KV cache groups with these windows (0: the group's layers see
  // every position; W: the last W). Throws l2kv::Error unless num_blocks >= 2, block_size >= 1
  // and there is at least one group, no window negative.
  BlockManager(int32_t num_blocks, int32_t block_size, bool enable_caching = false,
               std::vector<int32_t> group_windows = {0});

  int32_t block_size() const { return block_size_; }
  int32_t num_groups() const { return static_cast<int32_t>(windows_.size()); }
  int32_t group_window(int32_t group) const { return windows_.at(static_cast<size_t>(group)); }
  bool caching_enabled() const { return caching_; }
  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  // Blocks that can ever be handed out: all but the null block.
  int32_t num_usable() const { return num_blocks() - 1; }
  // Blocks no sequence holds: the free list and the evictable cached blocks.
  int32_t num_free() const { return static_cast<int32_t>(free_list_.size()) + num_evictable_; }
  // Of those, the ones still cached (findable by hash until evicted).
  int32_t num_evictable() const { return num_evictable_; }
  // Blocks that `num_tokens` tokens occupy (in one group).
  int32_t blocks_for(int64_t num_tokens) const;
  // The most blocks, all groups together, that one sequence holds while it computes its first
  // `num_tokens` tokens in chunks of at most `chunk_tokens`.
  int64_t blocks_to_hold(int64_t num_tokens, int64_t chunk_tokens) const;

  // Whether `seq`'s tables can grow to cover `total_tokens` tokens, after first taking the
  // cached blocks `prefix` (when `seq` has no tables yet; see share()).
  bool can_allocate(int64_t seq, int64_t total_tokens, const CachedPrefix& prefix = {}) const;
  // Grows `seq`'s tables (created on first use) to cover `total_tokens` tokens; a table that
  // covers them already is left as it is. Free blocks go first, then evictable ones (least
  // recently released first). Throws l2kv::Error, changing nothing, when too few are left.
  void allocate_for(int64_t seq, int64_t total_tokens);
  // Starts `seq`'s tables ([group]) with blocks that other sequences hold or that are cached
  // and evictable (their reference counts go up; evictable ones leave the LRU), or the null
  // block: the hook for prefix hits and forks. `seq` must have no tables yet; a block on the
  // free list is refused.
  void share(int64_t seq, const std::vector<std::vector<int32_t>>& tables);
  // Releases the blocks of `seq`'s windowed groups that no query at `next_position` or later
  // reads (wholly before next_position - window + 1), as free() does, leaving the null block
  // in their entries. Nothing happens without windowed groups or a table.
  void free_outside_windows(int64_t seq, int64_t next_position);
  // Drops `seq`'s tables; each block whose reference count reaches 0 joins the evictable LRU
  // when it is cached, else the free list (forgetting any hash). Blocks go back in reverse, so
  // a sequence's last blocks are evicted before its first. Unknown sequences are ignored.
  void free(int64_t seq);

  // `seq`'s block table of `group` (empty when it has none). Valid until `seq`'s tables next
  // change.
  std::span<const int32_t> block_table(int64_t seq, int32_t group = 0) const;
  bool has_table(int64_t seq) const { return tables_.count(seq) != 0; }
  int32_t num_sequences() const { return static_cast<int32_t>(tables_.size()); }
  int32_t ref_count(int32_t block) const;

  // Caches `block` (held, full and computed) of `group` under `hash` (its tokens' hash; the
  // group is part of the key). Returns false, changing nothing, when caching is off, when the
  // block is cached already, or when another block holds the key (two sequences computed the
  // same prefix at once: the first one stays cached).
  bool cache_block(int32_t block, const BlockHash& hash, int32_t group = 0);
  // The key a cached block is held under (its hash and group mixed), if it is cached.
  std::optional<BlockHash> block_hash(int32_t block) const;
  // The longest prefix of `hashes` (whole blocks from the start) whose blocks every group has
  // cached where it would read them: all of them for a full-attention group, those inside the
  // window of the position after the prefix for a windowed one.
  CachedPrefix find_cached_prefix(std::span<const BlockHash> hashes) const;

  // Checks every invariant (reference counts against the tables, each block in exactly one of
  // free list / LRU / held, the hash index against the blocks' hashes); throws l2kv::Error
  // naming the first broken one. O(num_blocks): for tests.
  void check_invariants() const;

 private:
  struct HashOf {
    size_t operator()(const BlockHash& h) const { return static_cast<size_t>(h.lo ^ h.hi); }
  };
  static constexpr int32_t kNone = -1;

  struct SequenceTables {
    std::vector<std::vector<int32_t>> tables;  // [group]
    std::vector<int32_t> first_kept;           // [group]: entries before it are the null block
  };
  void check_block(int32_t block) const;
  // The first block of a windowed group's table that a query at `position` may read.
  int32_t first_block_in_window(int32_t group, int64_t position) const;
  int32_t take_block();  // a block for a new holder: free list first, else evict the LRU head
  void release(int32_t block);                                    // one holder lets go
  int32_t blocks_short(int64_t seq, int64_t total_tokens) const;  // new blocks allocate_for takes
  void lru_push_back(int32_t block);
  void lru_remove(int32_t block);

  int32_t block_size_;
  bool caching_;
  std::vector<int32_t> windows_;    // [group]
  std::vector<int32_t> free_list_;  // popped from the back: lowest ids first
  std::vector<int32_t> ref_counts_;
  std::vector<std::optional<BlockHash>> hashes_;
  std::unordered_map<BlockHash, int32_t, HashOf> cached_;  // hash -> the block holding it
  // The evictable LRU, a doubly linked list through the blocks: head = next to evict.
  std::vector<int32_t> lru_prev_, lru_next_;
  std::vector<bool> in_lru_;
  int32_t lru_head_ = kNone, lru_tail_ = kNone;
  int32_t num_evictable_ = 0;
  std::unordered_map<int64_t, SequenceTables> tables_;
};

}  // namespace l2kv
