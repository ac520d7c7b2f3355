// Prefill attention on Hopper's warpgroup MMAs (wgmma), for head_dim 128 and a 16-bit cache:
// a work item is 128 query rows (the tokens x query heads of one KV head's group, so a K/V tile
// serves every head that shares it), and a persistent thread block per SM runs items one after
// another. A producer warp streams 128-key K/V tiles of the paged cache into rings of three with
// TMA (a box per KV block; the last, partial tile by cp.async), running ahead into the next item;
// two consumer warpgroups of 64 rows compute S = Q K^T and O += P V with wgmma (Q, K and V from
// shared memory, P from the softmax's registers) and take turns issuing them, so one's softmax
// runs while the tensor cores work on the other's MMAs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/kernels/attention/prefill_attention.h"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

// Whether the wgmma kernel serves `kv` (head_dim 128, K/V stored in the model's 16-bit dtype).
bool prefill_wgmma_supports(const PagedKvCache& kv);

// Query tokens of one sequence in one thread block: 128 rows over `group` heads each.
int32_t prefill_wgmma_tokens_per_item(int32_t group);

// Runs the planned work items (PrefillAttention::WorkItem, q_count <= tokens per item) on
// min(num_items, max_blocks) thread blocks; max_blocks 0: one per SM.
void launch_prefill_wgmma(const PrefillAttention::WorkItem* items, int32_t num_items, const void* q,
                          void* out, const PagedKvCache& kv, int32_t num_q_heads,
                          float softmax_scale, int32_t max_blocks, cudaStream_t stream);

}  // namespace l2kv
