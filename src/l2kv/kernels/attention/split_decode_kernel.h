// The interface between SplitDecode (host planning, split_decode.cpp) and its CUDA kernel
// (decode_split.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/split_plan.h"

namespace l2kv {

struct SplitKernelArgs {
  DecodeAttentionParams params;
  const SplitWorkItem* items = nullptr;      // [num_items]
  const int32_t* pair_num_splits = nullptr;  // [batch * num_kv_heads]
  const int32_t* pair_first_slot = nullptr;  // [batch * num_kv_heads]
  int32_t* pair_arrivals = nullptr;          // [batch * num_kv_heads], zero between launches
  float* partial_out = nullptr;              // [slots, group, head_dim], normalized
  float* partial_lse = nullptr;              // [slots, group], log2-sum-exp of scaled logits
  const int32_t* num_items = nullptr;        // device; set in graph mode: blocks beyond it exit
  int32_t prefetch_distance = 0;             // tiles ahead; 0 = off
  L2EvictionHint prefetch_hint = L2EvictionHint::kNormal;
  L2EvictionHint load_hint = L2EvictionHint::kNormal;
  bool pdl = false;  // launched with programmatic dependent launch (PrefetchPolicy::pdl)
};

inline constexpr int32_t kSplitTileTokens = 64;

// Most slices of one (sequence, KV head) the planner makes. The merge of partials keeps nothing
// in shared memory; the bound keeps the kernel's tail short (one L2 round trip per 16 slices).
inline constexpr int32_t kSplitMaxMergeSplits = 256;
// Pipeline depth (tiles in shared memory) for a head_dim and KV storage.
int32_t split_decode_stages(int32_t head_dim, bool fp8_kv);
// Thread blocks of the kernel resident per SM (occupancy query).
int32_t split_decode_ctas_per_sm(DType dtype, int32_t head_dim, bool fp8_kv);
void launch_split_decode_kernel(const SplitKernelArgs& args, int32_t num_items,
                                cudaStream_t stream);

}  // namespace l2kv
