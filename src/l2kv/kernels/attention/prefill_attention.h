// Causal attention for prompt tokens (prefill, or a chunk of one) over the paged KV cache, on
// tensor cores, online softmax, K/V tiles shared by all query heads of a KV head. Two kernels:
// warpgroup MMAs (wgmma, prefill_attention_wgmma.h) for head_dim 128 with a 16-bit cache, and
// warp MMAs (mma.sync, FlashAttention-2 style: a 16-token query tile per warp) for head_dim 64
// and 256, fp8 caches and sliding windows. Token i of a chunk that starts at position p attends to
// cache positions 0 .. p + i (with a sliding window W, p + i - W + 1 .. p + i), so chunked
// prefill needs nothing extra.
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

// Work items run heaviest first, their ends compared in buckets of prefill_order_bucket(the
// step's longest end) keys; within a bucket a (sequence, KV head)'s items run together and share
// K/V tiles in L2. From kOrderShortEnd keys on the bucket is an eighth of the longest end (a power
// of two, so 256 keys and up): long prompts get that sharing over more items, while short ones
// keep the rounds of the persistent kernel even; below it, buckets of kOrderShortBucket keys.
// Measured on the wgmma kernel (bench/NOTES.md); the warp-MMA kernel runs the same order.
constexpr int32_t kOrderShortEnd = 2048;
constexpr int32_t kOrderShortBucket = 1024;
constexpr int32_t kOrderBucketFraction = 8;
int32_t prefill_order_bucket(int32_t longest_end);

// Which kernel plan() chooses: kAuto takes wgmma wherever it serves the cache.
enum class PrefillKernel : uint8_t { kAuto, kWarpMma, kWgmma };

class PrefillAttention {
 public:
  PrefillAttention() = default;
  ~PrefillAttention();
  PrefillAttention(const PrefillAttention&) = delete;
  PrefillAttention& operator=(const PrefillAttention&) = delete;

  // The most work items plan() makes for chunks of at most `max_tokens` tokens in all over at
  // most `max_seqs` sequences: a pure host function.
  static int64_t max_work_items(int32_t max_tokens, int32_t max_seqs, int32_t num_kv_heads,
                                int32_t num_q_heads);
  // Allocates the device work list for that bound, once (at engine start, from
  // --max-num-batched-tokens and --max-num-seqs); a larger bound reallocates, a smaller one
  // keeps the list. plan() never allocates.
  void reserve(int32_t max_tokens, int32_t max_seqs, int32_t num_kv_heads, int32_t num_q_heads);

  // Plans thread blocks for `chunks` and uploads the plan; validates shapes (head_dim 64/128/256,
  // bf16 or fp16, 1-8 query heads per KV head, positions within the block table). Throws when
  // the plan needs more work items than reserve() sized the list for.
  void plan(const PagedKvCache& kv, int32_t num_q_heads, std::span<const PrefillChunk> chunks,
            cudaStream_t stream);

  // Forces a kernel for the plans that follow (tests and benchmarks compare the two); plan()
  // throws where the forced kernel does not serve the cache.
  void set_kernel(PrefillKernel kernel) { kernel_ = kernel; }
  // The kernel the last successful plan() chose.
  PrefillKernel planned_kernel() const { return planned_kernel_; }
  // At most this many persistent thread blocks for the wgmma kernel (0: one per SM, the
  // default). Tests set a few, so each block runs many items. Throws l2kv::Error below 0.
  void set_max_wgmma_blocks(int32_t blocks);

  // q, out: [rows, num_q_heads, head_dim] in kv.dtype. Allocation-free. sliding_window > 0:
  // position p sees only keys p - sliding_window + 1 .. p (the warp-MMA kernel; a wgmma plan
  // throws).
  void run(const void* q, void* out, const PagedKvCache& kv, int32_t num_q_heads,
           float softmax_scale, cudaStream_t stream, int32_t sliding_window = 0) const;

  struct WorkItem {
    int32_t seq, kv_head, q_row_begin, q_count, first_position;
  };

 private:
  std::vector<WorkItem> items_;
  WorkItem* device_items_ = nullptr;
  size_t capacity_ = 0;
  int32_t reserved_tokens_ = 0, reserved_seqs_ = 0;  // what capacity_ was sized for
  int32_t planned_group_ = 0;
  PrefillKernel kernel_ = PrefillKernel::kAuto;
  PrefillKernel planned_kernel_ = PrefillKernel::kAuto;  // kWarpMma or kWgmma after plan()
  int32_t max_wgmma_blocks_ = 0;
};

}  // namespace l2kv
