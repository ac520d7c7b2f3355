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
#include "l2kv/core/host_device.h"

namespace l2kv {

enum class KvLayout : uint8_t { kNHD, kHND };

constexpr std::string_view kv_layout_name(KvLayout l) {
  return l == KvLayout::kNHD ? "NHD" : "HND";
}

// How K and V are stored: in the model's 16-bit dtype, or as fp8 E4M3 with a per-layer scale
// (stored = value / scale), which halves the bytes every decode step reads.
enum class KvStorage : uint8_t { kModelDtype, kFp8E4M3 };

constexpr std::string_view kv_storage_name(KvStorage s) {
  return s == KvStorage::kFp8E4M3 ? "fp8_e4m3" : "auto";
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
  DType dtype = DType::kBFloat16;  // the model's dtype: queries, outputs, and K/V unless fp8
  KvStorage storage = KvStorage::kModelDtype;
  float k_scale = 1.f;  // fp8 only: K = stored * k_scale
  float v_scale = 1.f;
  // fp8 only, optional: [k_scale, v_scale] in device memory, read by the kernels in place of
  // the two fields above. Scales computed on the device from the first prompt (CudaStepState's
  // calculated KV scales) live there, so graphs captured before they exist replay with them.
  const float* device_scales = nullptr;

  L2KV_HOST_DEVICE bool fp8() const { return storage == KvStorage::kFp8E4M3; }
  L2KV_HOST_DEVICE int32_t element_bytes() const { return fp8() ? 1 : 2; }
#if defined(__CUDACC__)
  // The fp8 scales a kernel applies: device_scales where set, else k_scale / v_scale.
  __device__ __forceinline__ float key_scale() const {
    return device_scales ? device_scales[0] : k_scale;
  }
  __device__ __forceinline__ float value_scale() const {
    return device_scales ? device_scales[1] : v_scale;
  }
#endif

  // Strides in elements (element_bytes() each).
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
  int64_t pool_elements() const {
    return static_cast<int64_t>(num_blocks) * block_stride();
  }
  int64_t pool_bytes() const {
    return pool_elements() * element_bytes();
  }
};

// Checks the shape fields of `kv` and, where given, the host copies of its lengths and block
// table. Throws l2kv::Error naming the first problem found: zero or negative sizes, a block
// size other than 16/32/64, a length of zero or beyond the table, a block id outside the pool.
void validate_paged_kv(const PagedKvCache& kv, std::span<const int32_t> host_seq_lens,
                       std::span<const int32_t> host_block_table = {});

}  // namespace l2kv
