// The KV block manager: which physical blocks of the paged pool hold which sequence's tokens.
// Host bookkeeping only (free list, reference counts, per-sequence block tables, a content
// hash per full block); it never touches a device. The runner owns the pool itself.
//
// Block 0 is the null block: it is never handed out. The CUDA runner pads graph batches with
// rows whose block tables point at block 0, so their K/V writes land there and never in a
// block some sequence owns. Usable blocks are 1 .. num_blocks - 1.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <unordered_map>
#include <vector>

namespace l2kv {

class BlockManager {
 public:
  static constexpr int32_t kNullBlock = 0;

  // A pool of `num_blocks` blocks (the null block included) of `block_size` tokens each.
  // Throws l2kv::Error unless num_blocks >= 2 and block_size >= 1.
  BlockManager(int32_t num_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return static_cast<int32_t>(ref_counts_.size()); }
  // Blocks that can ever be handed out: all but the null block.
  int32_t num_usable() const { return num_blocks() - 1; }
  int32_t num_free() const { return static_cast<int32_t>(free_list_.size()); }
  // Blocks that `num_tokens` tokens occupy.
  int32_t blocks_for(int64_t num_tokens) const;

  // Whether `seq`'s table can grow to cover `total_tokens` tokens with the free blocks.
  bool can_allocate(int64_t seq, int64_t total_tokens) const;
  // Grows `seq`'s table (created on first use) to cover `total_tokens` tokens; a table that
  // covers them already is left as it is. Throws l2kv::Error, changing nothing, when too few
  // blocks are free.
  void allocate_for(int64_t seq, int64_t total_tokens);
  // Starts `seq`'s table with `blocks` that other sequences hold (their reference counts go
  // up), the hook for prefix sharing and forks. `seq` must have no table yet.
  void share(int64_t seq, std::span<const int32_t> blocks);
  // Drops `seq`'s table; each block whose reference count reaches 0 returns to the free list
  // (and forgets its hash). Unknown sequences are ignored.
  void free(int64_t seq);

  // `seq`'s block table (empty when it has none). Valid until `seq`'s table next changes.
  std::span<const int32_t> block_table(int64_t seq) const;
  bool has_table(int64_t seq) const { return tables_.count(seq) != 0; }
  int32_t num_sequences() const { return static_cast<int32_t>(tables_.size()); }
  int32_t ref_count(int32_t block) const;

  // The content hash of a full block (its tokens and those before it), for prefix caching:
  // set when a block fills, looked up by a later prefix match, cleared when the block is freed.
  void set_block_hash(int32_t block, uint64_t hash);
  std::optional<uint64_t> block_hash(int32_t block) const;

 private:
  void check_block(int32_t block) const;

  int32_t block_size_;
  std::vector<int32_t> free_list_;  // popped from the back: lowest ids first
  std::vector<int32_t> ref_counts_;
  std::vector<std::optional<uint64_t>> hashes_;
  std::unordered_map<int64_t, std::vector<int32_t>> tables_;
};

}  // namespace l2kv
