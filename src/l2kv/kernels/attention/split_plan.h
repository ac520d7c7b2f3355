// Host-side plan of the split-KV decode kernel: which thread block computes which slice of
// which (sequence, KV head), chosen so that every SM is busy for any mix of lengths.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace l2kv {

// One thread block's work: tokens [token_begin, token_end) of one (sequence, KV head).
struct SplitWorkItem {
  int32_t seq;
  int32_t kv_head;
  int32_t token_begin;
  int32_t token_end;
  int32_t partial_slot;  // -1: the only split, writes the output directly
  int32_t pair;          // seq * num_kv_heads + kv_head, over the planned sequences
  int32_t q_row;         // row of q and out: seq, unless SplitDecode::plan_rows remaps it
};

// Costs are in units of the time a thread block takes for one 64-token tile of a 16-bit
// cache. The defaults are for a 16-bit cache; use_fp8_cache_costs() sets an fp8 one's.
struct SplitPlanConfig {
  int32_t tile_tokens = 64;         // tokens a thread block loads per pipeline stage
  int32_t concurrent_ctas = 264;    // thread blocks resident at once (SMs x blocks per SM)
  double cta_overhead_tiles = 1.0;  // fixed cost of a thread block (prologue and epilogue)
  double tile_cost = 1.0;           // cost of one tile
  // The last block of a split pair merges all its partials after an atomic handshake; its
  // extra cost is merge_fixed_tiles + splits * group * merge_tiles_per_partial_head.
  int32_t group_size = 1;
  int32_t forced_tiles_per_split = 0;  // > 0: use this slice length instead of searching
  int32_t max_items = 0;  // > 0: plan at most this many work items (a CUDA graph's fixed grid)
  bool estimate_forced = true;  // false: skip the cost model when the slice length is forced
  int32_t max_splits = 0;  // > 0: at most this many slices per (sequence, KV head) (merge space)
  double merge_fixed_tiles = 2.0;
  double merge_tiles_per_partial_head = 1.0 / 16;
};

// Costs for an fp8 cache, fitted on an H200 to the best of all slice lengths measured for
// two models, batches 1-128 and contexts 1K-32K (bench/results/2026-11-27-h200/planner-fit):
// a tile is half the bytes but needs widening (0.6), and a block's fixed cost weighs more.
void use_fp8_cache_costs(SplitPlanConfig& config);

struct SplitPlan {
  int32_t tiles_per_split = 0;           // longest slice, in tiles
  std::vector<SplitWorkItem> items;      // longest first
  std::vector<int32_t> pair_num_splits;  // [batch * num_kv_heads]
  std::vector<int32_t> pair_first_slot;  // partial slots of a pair are consecutive; -1 if none
  int32_t num_partial_slots = 0;
  double estimated_makespan_tiles = 0;  // the planner's cost model, for tests and logs
};

// Splits every (sequence, KV head) into slices of whole tiles. The slice length is chosen
// among candidates by a greedy longest-first schedule on `concurrent_ctas` slots, which
// models the hardware's block scheduler. Lengths must be positive.
SplitPlan plan_split_decode(std::span<const int32_t> seq_lens, int32_t num_kv_heads,
                            const SplitPlanConfig& config);

}  // namespace l2kv
