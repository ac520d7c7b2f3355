#include "l2kv/kv_cache/paged_kv.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw Error("invalid paged KV cache: " + message);
}

}  // namespace

void validate_paged_kv(const PagedKvCache& kv, std::span<const int32_t> host_seq_lens,
                       std::span<const int32_t> host_block_table) {
  require(kv.batch_size > 0, "batch_size must be positive, got " + std::to_string(kv.batch_size));
  require(kv.num_blocks > 0, "num_blocks must be positive, got " + std::to_string(kv.num_blocks));
  require(kv.num_kv_heads > 0,
          "num_kv_heads must be positive, got " + std::to_string(kv.num_kv_heads));
  require(kv.head_dim > 0, "head_dim must be positive, got " + std::to_string(kv.head_dim));
  require(kv.max_blocks_per_seq > 0,
          "max_blocks_per_seq must be positive, got " + std::to_string(kv.max_blocks_per_seq));
  require(std::ranges::find(kSupportedBlockSizes, kv.block_size) != std::end(kSupportedBlockSizes),
          "block_size must be 16, 32 or 64, got " + std::to_string(kv.block_size));
  require(kv.k_pool != nullptr && kv.v_pool != nullptr, "K and V pools must be set");
  require(!kv.fp8() || (std::isfinite(kv.k_scale) && kv.k_scale > 0 && std::isfinite(kv.v_scale) &&
                        kv.v_scale > 0),
          "fp8 KV scales must be positive and finite, got k_scale " + std::to_string(kv.k_scale) +
              " and v_scale " + std::to_string(kv.v_scale));
  require(kv.block_table != nullptr && kv.seq_lens != nullptr,
          "block table and sequence lengths must be set");
  require(static_cast<int64_t>(host_seq_lens.size()) == kv.batch_size,
          "expected " + std::to_string(kv.batch_size) + " sequence lengths, got " +
              std::to_string(host_seq_lens.size()));
  const int64_t capacity = static_cast<int64_t>(kv.max_blocks_per_seq) * kv.block_size;
  for (size_t i = 0; i < host_seq_lens.size(); ++i) {
    const int32_t len = host_seq_lens[i];
    require(len > 0, "sequence " + std::to_string(i) + " has length " + std::to_string(len) +
                         "; decode needs at least one cached token");
    require(len <= capacity, "sequence " + std::to_string(i) + " has length " +
                                 std::to_string(len) + " beyond its block table (" +
                                 std::to_string(kv.max_blocks_per_seq) + " blocks of " +
                                 std::to_string(kv.block_size) + " tokens)");
  }
  if (host_block_table.empty()) return;
  require(static_cast<int64_t>(host_block_table.size()) ==
              static_cast<int64_t>(kv.batch_size) * kv.max_blocks_per_seq,
          "block table has " + std::to_string(host_block_table.size()) + " entries, expected " +
              std::to_string(static_cast<int64_t>(kv.batch_size) * kv.max_blocks_per_seq));
  for (int32_t seq = 0; seq < kv.batch_size; ++seq) {
    const int32_t used = (host_seq_lens[seq] + kv.block_size - 1) / kv.block_size;
    for (int32_t b = 0; b < used; ++b) {
      const int32_t id = host_block_table[static_cast<size_t>(seq) * kv.max_blocks_per_seq + b];
      require(id >= 0 && id < kv.num_blocks, "sequence " + std::to_string(seq) + " block " +
                                                 std::to_string(b) + " maps to " +
                                                 std::to_string(id) + ", outside the pool of " +
                                                 std::to_string(kv.num_blocks) + " blocks");
    }
  }
}

}  // namespace l2kv
