// Decode attention over the paged KV cache: one query token per sequence, MHA or GQA
// (1 to 8 query heads per KV head), bf16 or fp16, head_dim 64 or 128 (the split kernel also
// 256: Gemma 3), fp32 accumulation.
//
//   PagedV1Decode    the paper's baseline, in the style of vLLM's paged-attention v1, with
//                    the paper's Algorithm 1 prefetch as a policy; v2-style partitions and a
//                    reduce beyond 48K tokens (paged_v1_decode: the workspace-free short path).
//   SplitDecode      l2kv's production kernel: split-KV over all SMs, planned on the host.
//   decode_attention_reference (decode_reference.h)  the CPU oracle.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>

#include "l2kv/kernels/attention/prefetch_policy.h"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

inline constexpr int kMaxGqaGroup = 8;  // query heads per KV head the kernels serve

struct DecodeAttentionParams {
  const void* q = nullptr;  // [batch, num_q_heads, head_dim], kv.dtype, device
  void* out = nullptr;      // [batch, num_q_heads, head_dim], kv.dtype, device
  PagedKvCache kv;
  int32_t num_q_heads = 0;
  float softmax_scale = 0.f;  // usually 1/sqrt(head_dim)
  int32_t max_seq_len = 0;    // max over kv.seq_lens, known on the host
  // > 0: each query sees only the last sliding_window positions, its own included (Gemma 3's
  // local layers); the split kernel and the prefill kernels honour it, paged_v1 refuses it.
  int32_t sliding_window = 0;

  int32_t group_size() const { return num_q_heads / kv.num_kv_heads; }
};

// Validates the cache (validate_paged_kv) and the attention shape: head_dim 64, 128 or 256,
// num_q_heads a multiple of num_kv_heads with at most 8 per KV head, q/out set,
// max_seq_len equal to the largest host length. Throws l2kv::Error.
void validate_decode_attention(const DecodeAttentionParams& params,
                               std::span<const int32_t> host_seq_lens,
                               std::span<const int32_t> host_block_table = {});

// paged_v1 at any length, as vLLM's paged-attention v2 extends v1. Up to
// kPagedV1SinglePassMaxLen tokens one thread block per (query head, sequence) holds every
// logit in shared memory and writes the output: the v1 kernel, no reduce. Beyond that each
// sequence is cut into partitions of kPagedV1PartitionTokens; a block computes a partition's
// max, exp-sum and normalized output into a workspace and a reduce kernel merges them (a
// sequence that fits in one partition is still written directly).
inline constexpr int32_t kPagedV1SinglePassMaxLen = 48 * 1024;  // logits: 192 KiB of smem
inline constexpr int32_t kPagedV1PartitionTokens = 4096;        // a multiple of every block size

struct PagedV1Plan {
  int32_t partition_tokens = 0;  // tokens per partition (single pass: the padded length)
  int32_t max_partitions = 1;    // partitions of a max_seq_len sequence; 1 = single pass
  int32_t grid_partitions = 1;   // thread blocks per (head, sequence); each strides partitions
  bool partitioned() const { return max_partitions > 1; }
};

// The launch of paged_v1 for sequences of up to `max_seq_len` tokens: a pure host function.
// grid_partitions fills about kPagedV1TargetBlocksPerSm blocks per SM when batch x heads alone
// would not (a long sequence at batch 1), and never exceeds max_partitions.
inline constexpr int32_t kPagedV1TargetBlocksPerSm = 4;
PagedV1Plan plan_paged_v1(int32_t max_seq_len, int32_t block_size, int32_t batch,
                          int32_t num_q_heads, int32_t sm_count);

// Floats of workspace (per-partition max, exp-sum and output) a batch of `batch` sequences of
// up to `max_seq_len` tokens needs; 0 when a single pass serves that length.
int64_t paged_v1_workspace_floats(int32_t batch, int32_t num_q_heads, int32_t head_dim,
                                  int32_t max_seq_len);

// paged_v1 with its partition workspace. reserve() allocates once (at engine start, from the
// largest batch and --max-model-len); run() is allocation-free and graph-capturable and
// throws when `params` needs more workspace than was reserved.
class PagedV1Decode {
 public:
  PagedV1Decode() = default;
  ~PagedV1Decode();
  PagedV1Decode(const PagedV1Decode&) = delete;
  PagedV1Decode& operator=(const PagedV1Decode&) = delete;

  // Sizes the workspace for batches of up to `max_batch` sequences of up to `max_seq_len`
  // tokens (frees and reallocates only when that needs more than is held).
  void reserve(int32_t max_batch, int32_t num_q_heads, int32_t head_dim, int32_t max_seq_len);
  int64_t reserved_floats() const { return capacity_floats_; }

  // Runs the kernel (and the reduce, where a sequence may span partitions). `policy` enabled =
  // Algorithm 1: each warp prefetches the K (then V) block it will process `distance`
  // iterations later. kAuto prefetches one iteration ahead only where that paid on the H100:
  // HND layout (one bulk prefetch per block; NHD's per-token prefetches cost more than they
  // save) and fewer than 3 thread blocks resident per SM (the kernel is latency-bound; with
  // more, prefetches crowd the L2 and lose 3-10 %). A device length outside
  // [1, params.max_seq_len] (a caller error the host checks rule out) yields NaN rows. Runs
  // share the workspace: two in flight at once (on different streams) must not both partition.
  void run(const DecodeAttentionParams& params, const PrefetchPolicy& policy,
           cudaStream_t stream) const;

 private:
  float* partials_ = nullptr;
  int64_t capacity_floats_ = 0;
};

// paged_v1 without a workspace: for params.max_seq_len up to kPagedV1SinglePassMaxLen (the
// single pass); longer contexts need a PagedV1Decode and throw here.
void paged_v1_decode(const DecodeAttentionParams& params, const PrefetchPolicy& policy,
                     cudaStream_t stream);

}  // namespace l2kv
