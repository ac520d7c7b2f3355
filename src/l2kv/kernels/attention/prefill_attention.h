// Causal attention for prompt tokens (prefill, or a chunk of one) over the paged KV cache, on
// tensor cores (FlashAttention-2 style: a 16-token query tile per warp, online softmax,
// K/V tiles shared by all query heads of a KV head). Token i of a chunk that starts at
// position p attends to cache positions 0 .. p + i, so chunked prefill needs nothing extra.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

// The new tokens of one sequence: rows [q_row_begin, q_row_begin + num_tokens) of q and out,
// at positions first_position, first_position + 1, ...; `seq` is its row of the block table.
struct PrefillChunk {
  int32_t seq;
  int32_t q_row_begin;
  int32_t num_tokens;
  int32_t first_position;
};

class PrefillAttention {
 public:
  PrefillAttention() = default;
  ~PrefillAttention();
  PrefillAttention(const PrefillAttention&) = delete;
  PrefillAttention& operator=(const PrefillAttention&) = delete;

  // Plans thread blocks for `chunks` and uploads the plan; validates shapes (head_dim 64/128,
  // bf16 or fp16, 1-8 query heads per KV head, positions within the block table).
  void plan(const PagedKvCache& kv, int32_t num_q_heads, std::span<const PrefillChunk> chunks,
            cudaStream_t stream);

  // q, out: [rows, num_q_heads, head_dim] in kv.dtype. Allocation-free.
  void run(const void* q, void* out, const PagedKvCache& kv, int32_t num_q_heads,
           float softmax_scale, cudaStream_t stream) const;

  struct WorkItem {
    int32_t seq, kv_head, q_row_begin, q_count, first_position;
  };

 private:
  std::vector<WorkItem> items_;
  WorkItem* device_items_ = nullptr;
  size_t capacity_ = 0;
  int32_t planned_group_ = 0;
};

}  // namespace l2kv
