// L2 prefetch of paged KV blocks, shared by the decode kernels. HND keeps one KV head's block
// contiguous, so one bulk prefetch covers it; NHD interleaves heads, so each token's row of
// this head is prefetched separately.
#pragma once

#include <cstdint>

#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

// Device-side form of a PrefetchPolicy, resolved on the host.
struct KvPrefetch {
  int32_t distance = 0;  // steps ahead; 0 disables prefetch
  L2EvictionHint hint = L2EvictionHint::kNormal;
  bool group_leader_only = true;  // paged_v1 under GQA: see PrefetchPolicy
};

// Prefetches tokens [token_begin, token_end) of `physical_block` (token indices within the
// block) for one KV head from `pool`, spread over `num_threads` threads of which this is
// `thread`. Rows are 16-byte multiples: head_dim (64 or 128) times 1 or 2 bytes.
template <typename T>
__device__ __forceinline__ void prefetch_kv_block(const PagedKvCache& kv, const T* pool,
                                                  int32_t physical_block, int32_t kv_head,
                                                  int32_t token_begin, int32_t token_end,
                                                  int thread, int num_threads,
                                                  L2EvictionHint hint) {
  const bool with_hint = hint != L2EvictionHint::kNormal;
  const uint64_t policy = with_hint ? ptx::make_l2_policy(hint) : 0;
  if (kv.layout == KvLayout::kHND) {
    if (thread != 0) return;
    const T* start = pool + kv.offset(physical_block, token_begin, kv_head);
    const uint32_t bytes =
        static_cast<uint32_t>((token_end - token_begin) * kv.head_dim * sizeof(T));
    with_hint ? ptx::bulk_prefetch_l2(start, bytes, policy) : ptx::bulk_prefetch_l2(start, bytes);
    return;
  }
  const uint32_t row_bytes = static_cast<uint32_t>(kv.head_dim * sizeof(T));
  for (int32_t t = token_begin + thread; t < token_end; t += num_threads) {
    const T* row = pool + kv.offset(physical_block, t, kv_head);
    with_hint ? ptx::bulk_prefetch_l2(row, row_bytes, policy)
              : ptx::bulk_prefetch_l2(row, row_bytes);
  }
}

}  // namespace l2kv
