// Tensor parallelism: what one rank of `size` holds of a model. Attention heads and their KV
// heads, MLP features and LM-head rows are split in contiguous ranges (Megatron's column and row
// parallel layers): each rank computes its heads' attention and its slice of the MLP, the O and
// down projections then give partial sums over the hidden size that an all-reduce adds up, and
// the LM head gives the rank's part of the vocabulary. Where there are fewer KV heads than ranks,
// each KV head is kept by size / kv_heads ranks (the q heads of a rank all share one KV head).
// The embedding table and the norms are whole on every rank.
#pragma once

#include <cstdint>

#include "l2kv/model/model_config.h"

namespace l2kv {

struct TpShard {
  int32_t rank = 0, size = 1;
  int64_t q_head_begin = 0, q_heads = 0;    // attention heads of this rank
  int64_t kv_head_begin = 0, kv_heads = 0;  // their KV heads
  int64_t inter_begin = 0, inter = 0;       // MLP features (rows of gate and up, columns of down)
  int64_t vocab_begin = 0, vocab = 0;       // LM-head rows: the rank's logits
};

// Rank `rank` of `size` of the model `c`. Throws l2kv::Error naming what does not split: a size
// below 1 or a rank outside it, attention heads or MLP features not divisible by the size, KV
// heads that neither divide by it nor divide it, or an architecture tensor parallelism does not
// cover yet (mixtures of experts, Gemma 3). The vocabulary may split unevenly.
TpShard tp_shard(const ModelConfig& c, int32_t rank, int32_t size);

}  // namespace l2kv
