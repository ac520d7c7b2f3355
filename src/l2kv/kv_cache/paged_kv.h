// The paged KV cache of one layer, as one plain descriptor that host and device code share.
//
// K and V live in pools of fixed-size blocks; a sequence's tokens are found through its row
// of the block table. Two layouts are supported:
//   NHD  [num_blocks, block_size, num_kv_heads, head_dim]  (vLLM FlashAttention backend,
//        FlashInfer default): one token's heads are adjacent.
//   HND  [num_blocks, num_kv_heads, block_size, head_dim]  (vLLM paged-attention kernels):
//        one block of one KV head is a single contiguous range, so one bulk L2 prefetch
//        covers it.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "l2kv/core/dtype.h"

#if defined(__CUDACC__)
#define L2KV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define L2KV_HOST_DEVICE inline
#endif

namespace l2kv {

enum class KvLayout : uint8_t { kNHD, kHND };

constexpr std::string_view kv_layout_name(KvLayout l) {
  return l == KvLayout::kNHD ? "NHD" : "HND";
}

// Block sizes the kernels are built for.
inline constexpr int kSupportedBlockSizes[] = {16, 32, 64};

struct PagedKvCache {
  void* k_pool = nullptr;                // num_blocks blocks, layout as above
  void* v_pool = nullptr;                // same shape as k_pool
  const int32_t* block_table = nullptr;  // [batch_size, max_blocks_per_seq], device
  const int32_t* seq_lens = nullptr;     // [batch_size], device; tokens cached per sequence
  int32_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t num_kv_heads = 0;
  int32_t head_dim = 0;
  int32_t batch_size = 0;
  int32_t max_blocks_per_seq = 0;
  KvLayout layout = KvLayout::kHND;
  DType dtype = DType::kBFloat16;

  // Strides in elements.
  L2KV_HOST_DEVICE int64_t block_stride() const {
    return static_cast<int64_t>(block_size) * num_kv_heads * head_dim;
  }
  L2KV_HOST_DEVICE int64_t token_stride() const {
    return layout == KvLayout::kNHD ? static_cast<int64_t>(num_kv_heads) * head_dim : head_dim;
  }
  L2KV_HOST_DEVICE int64_t head_stride() const {
    return layout == KvLayout::kNHD ? head_dim : static_cast<int64_t>(block_size) * head_dim;
  }
  // Element offset of (physical block, token within block, kv head) in either pool.
  L2KV_HOST_DEVICE int64_t offset(int32_t physical_block, int32_t token_in_block,
                                  int32_t kv_head) const {
    return physical_block * block_stride() + token_in_block * token_stride() +
           kv_head * head_stride();
  }
  int64_t pool_elements() const { return static_cast<int64_t>(num_blocks) * block_stride(); }
  int64_t pool_bytes() const { return pool_elements() * dtype_bytes(dtype); }
};

// Checks the shape fields of `kv` and, where given, the host copies of its lengths and block
// table. Throws l2kv::Error naming the first problem found: zero or negative sizes, a block
// size other than 16/32/64, a length of zero or beyond the table, a block id outside the pool.
void validate_paged_kv(const PagedKvCache& kv, std::span<const int32_t> host_seq_lens,
                       std::span<const int32_t> host_block_table = {});

}  // namespace l2kv
