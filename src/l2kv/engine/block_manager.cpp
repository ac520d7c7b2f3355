#include "l2kv/engine/block_manager.h"

#include <string>

#include "l2kv/core/error.h"

namespace l2kv {

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size) : block_size_(block_size) {
  if (block_size < 1)
    throw Error("block size must be at least 1, got " + std::to_string(block_size));
  if (num_blocks < 2)
    throw Error("a KV pool needs at least 2 blocks (block 0 is reserved), got " +
                std::to_string(num_blocks));
  ref_counts_.assign(static_cast<size_t>(num_blocks), 0);
  hashes_.resize(static_cast<size_t>(num_blocks));
  free_list_.reserve(static_cast<size_t>(num_blocks - 1));
  for (int32_t b = num_blocks - 1; b > kNullBlock; --b) free_list_.push_back(b);
}

int32_t BlockManager::blocks_for(int64_t num_tokens) const {
  return static_cast<int32_t>((num_tokens + block_size_ - 1) / block_size_);
}

bool BlockManager::can_allocate(int64_t seq, int64_t total_tokens) const {
  const int64_t have = static_cast<int64_t>(block_table(seq).size());
  return blocks_for(total_tokens) - have <= num_free();
}

void BlockManager::allocate_for(int64_t seq, int64_t total_tokens) {
  const int32_t need = blocks_for(total_tokens);
  const int32_t have = static_cast<int32_t>(block_table(seq).size());
  if (need - have > num_free())
    throw Error("KV pool exhausted: sequence " + std::to_string(seq) + " needs " +
                std::to_string(need - have) + " more blocks, " + std::to_string(num_free()) +
                " are free");
  std::vector<int32_t>& table = tables_[seq];
  while (static_cast<int32_t>(table.size()) < need) {
    const int32_t block = free_list_.back();
    free_list_.pop_back();
    ref_counts_[block] = 1;
    table.push_back(block);
  }
}

void BlockManager::share(int64_t seq, std::span<const int32_t> blocks) {
  if (has_table(seq))
    throw Error("BlockManager::share: sequence " + std::to_string(seq) + " already has blocks");
  for (int32_t block : blocks) {
    check_block(block);
    if (ref_counts_[block] == 0)
      throw Error("BlockManager::share: block " + std::to_string(block) + " is free");
  }
  std::vector<int32_t>& table = tables_[seq];
  for (int32_t block : blocks) {
    ++ref_counts_[block];
    table.push_back(block);
  }
}

void BlockManager::free(int64_t seq) {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  // Released in reverse, so the next allocation reuses the front of this table first.
  for (auto block = it->second.rbegin(); block != it->second.rend(); ++block) {
    if (--ref_counts_[*block] == 0) {
      hashes_[*block].reset();
      free_list_.push_back(*block);
    }
  }
  tables_.erase(it);
}

std::span<const int32_t> BlockManager::block_table(int64_t seq) const {
  const auto it = tables_.find(seq);
  if (it == tables_.end()) return {};
  return it->second;
}

int32_t BlockManager::ref_count(int32_t block) const {
  check_block(block);
  return ref_counts_[block];
}

void BlockManager::set_block_hash(int32_t block, uint64_t hash) {
  check_block(block);
  hashes_[block] = hash;
}

std::optional<uint64_t> BlockManager::block_hash(int32_t block) const {
  check_block(block);
  return hashes_[block];
}

void BlockManager::check_block(int32_t block) const {
  if (block < 0 || block >= num_blocks())
    throw Error("block " + std::to_string(block) + " outside a pool of " +
                std::to_string(num_blocks()) + " blocks");
}

}  // namespace l2kv
