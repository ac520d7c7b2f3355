// How a model's layers share the paged KV pool (vLLM's KV cache groups).
//
// A model whose layers all attend to every position needs one block table per sequence: block
// b holds positions [b * block_size, (b + 1) * block_size) of every layer. A model that mixes
// full-attention layers with sliding-window ones (Gemma 3: five windowed layers to one global)
// would waste most of its cache that way: a windowed layer never reads a position that left its
// window again. So its layers are split into groups of at most `num_slots` layers of one kind;
// each group has its own block table per sequence, and the block manager frees a windowed
// group's blocks once every query to come is past them. The pool holds `num_slots` tensors of
// `num_blocks` blocks; a block id belongs to one group at a time and, in that group, block
// `id` of tensor `layer_slot[l]` holds layer l. Every group's blocks come from one pool, so
// long conversations and short ones share memory without a fixed split.
#pragma once

#include <cstdint>
#include <vector>

#include "l2kv/model/model_config.h"

namespace l2kv {

struct KvCacheGroups {
  std::vector<int32_t> windows;      // [group]: 0 = every position; W = the last W positions
  std::vector<int32_t> layer_group;  // [layer]
  std::vector<int32_t> layer_slot;   // [layer]: the pool tensor that holds the layer
  int32_t num_slots = 0;             // layers' worth of K/V in one block id

  int32_t num_groups() const { return static_cast<int32_t>(windows.size()); }
  int64_t num_layers() const { return static_cast<int64_t>(layer_group.size()); }
};

// One group of every layer, slot = layer: each layer's window (if any) is applied by attention
// alone and no block is freed early.
KvCacheGroups single_kv_cache_group(const ModelConfig& config);

// The engine's grouping: single_kv_cache_group() for a model without sliding-window layers;
// otherwise the full-attention layers in group 0 (when there are any) and the windowed layers
// in groups after it, `num_slots` layers each (the number of full-attention layers, or all the
// windowed layers when there are none), in layer order. Gemma 3 27B (10 global and 52 windowed
// layers): groups of 10, 10, 10, 10, 10, 10 and 2 layers.
KvCacheGroups windowed_kv_cache_groups(const ModelConfig& config);

}  // namespace l2kv
