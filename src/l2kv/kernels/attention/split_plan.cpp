#include "l2kv/kernels/attention/split_plan.h"

#include <algorithm>
#include <functional>
#include <queue>
#include <string>

#include "l2kv/core/ceil_div.h"
#include "l2kv/core/error.h"

namespace l2kv {
namespace {

// Number of slices and slice length (tiles) when no slice may exceed `max_tiles`.
struct Slicing {
  int32_t count;
  int32_t tiles_each;
};
Slicing slice(int32_t tiles, int32_t max_tiles, int32_t max_splits) {
  if (max_splits > 0) max_tiles = std::max(max_tiles, ceil_div(tiles, max_splits));
  const int32_t count = ceil_div(tiles, max_tiles);
  const int32_t each = ceil_div(tiles, count);
  return {ceil_div(tiles, each), each};
}

// Makespan of a longest-first greedy schedule of all slices on `slots` parallel slots.
double estimate_makespan(std::span<const int32_t> seq_tiles, int32_t num_kv_heads,
                         int32_t max_tiles, const SplitPlanConfig& config) {
  std::vector<double> costs;
  for (int32_t tiles : seq_tiles) {
    const Slicing s = slice(tiles, max_tiles, config.max_splits);
    // The merging block is the pair's last to finish: charge the merge to its shortest slice.
    const double merge = s.count > 1
                             ? config.merge_fixed_tiles +
                                   s.count * config.group_size * config.merge_tiles_per_partial_head
                             : 0.0;
    for (int32_t i = 0; i < s.count; ++i) {
      const int32_t slice_tiles = std::min(s.tiles_each, tiles - i * s.tiles_each);
      const double cost = slice_tiles * config.tile_cost + config.cta_overhead_tiles +
                          (i == s.count - 1 ? merge : 0.0);
      costs.insert(costs.end(), num_kv_heads, cost);
    }
  }
  std::sort(costs.begin(), costs.end(), std::greater<>());
  std::priority_queue<double, std::vector<double>, std::greater<>> slots;
  for (int32_t i = 0; i < config.concurrent_ctas; ++i) slots.push(0);
  double makespan = 0;
  for (double c : costs) {
    const double start = slots.top();
    slots.pop();
    slots.push(start + c);
    makespan = std::max(makespan, start + c);
  }
  return makespan;
}

// Work items (thread blocks) of a plan whose slices are at most `max_tiles` long.
int64_t count_items(std::span<const int32_t> seq_tiles, int32_t num_kv_heads, int32_t max_tiles,
                    int32_t max_splits) {
  int64_t items = 0;
  for (int32_t tiles : seq_tiles) items += slice(tiles, max_tiles, max_splits).count;
  return items * num_kv_heads;
}

}  // namespace

void use_fp8_cache_costs(SplitPlanConfig& config) {
  config.tile_cost = 0.6;
  config.cta_overhead_tiles = 4.0;
  config.merge_fixed_tiles = 0.0;
  config.merge_tiles_per_partial_head = 1.0 / 64;
}

SplitPlan plan_split_decode(std::span<const int32_t> seq_lens, int32_t num_kv_heads,
                            const SplitPlanConfig& config) {
  if (seq_lens.empty()) throw Error("split plan: empty batch");
  if (num_kv_heads <= 0 || config.tile_tokens <= 0 || config.concurrent_ctas <= 0)
    throw Error("split plan: heads, tile size and concurrency must be positive");
  std::vector<int32_t> seq_tiles(seq_lens.size());
  int32_t longest = 0;
  int64_t total_tiles = 0;
  for (size_t i = 0; i < seq_lens.size(); ++i) {
    if (seq_lens[i] <= 0)
      throw Error("split plan: sequence " + std::to_string(i) + " has length " +
                  std::to_string(seq_lens[i]));
    seq_tiles[i] = ceil_div(seq_lens[i], config.tile_tokens);
    longest = std::max(longest, seq_tiles[i]);
    total_tiles += static_cast<int64_t>(seq_tiles[i]) * num_kv_heads;
  }
  const int64_t pairs = static_cast<int64_t>(seq_lens.size()) * num_kv_heads;
  if (config.max_items > 0 && pairs > config.max_items)
    throw Error("split plan: " + std::to_string(pairs) + " (sequence, KV head) pairs exceed the " +
                std::to_string(config.max_items) + " work items planned for");
  const auto fits = [&](int32_t max_tiles) {
    return config.max_items <= 0 ||
           count_items(seq_tiles, num_kv_heads, max_tiles, config.max_splits) <= config.max_items;
  };

  // Candidate slice lengths: longest / k. With many more pairs than slots, splitting cannot
  // help the balance much and only adds merge work, so keep whole sequences.
  int32_t best_tiles = longest;
  double best_cost = 0;
  if (config.forced_tiles_per_split > 0) {
    best_tiles = std::min(longest, config.forced_tiles_per_split);
    while (!fits(best_tiles)) ++best_tiles;
    best_cost = config.estimate_forced
                    ? estimate_makespan(seq_tiles, num_kv_heads, best_tiles, config)
                    : 0.0;
  } else {
    best_cost = estimate_makespan(seq_tiles, num_kv_heads, longest, config);
  }
  if (config.forced_tiles_per_split <= 0 && pairs < 4LL * config.concurrent_ctas) {
    int32_t previous = longest;
    for (int32_t k = 2; k <= 64; ++k) {
      const int32_t candidate = ceil_div(longest, k);
      if (candidate == previous) continue;
      previous = candidate;
      // Beyond ~8 waves of slices the schedule is balanced already.
      if (total_tiles / candidate > 8LL * config.concurrent_ctas) break;
      if (!fits(candidate)) break;  // shorter slices only make more items
      const double cost = estimate_makespan(seq_tiles, num_kv_heads, candidate, config);
      if (cost < best_cost) {
        best_cost = cost;
        best_tiles = candidate;
      }
      if (candidate == 1) break;
    }
  }

  SplitPlan plan;
  plan.tiles_per_split = best_tiles;
  plan.estimated_makespan_tiles = best_cost;
  plan.pair_num_splits.assign(pairs, 0);
  plan.pair_first_slot.assign(pairs, -1);
  for (size_t seq = 0; seq < seq_lens.size(); ++seq) {
    const Slicing s = slice(seq_tiles[seq], best_tiles, config.max_splits);
    const int32_t slice_tokens = s.tiles_each * config.tile_tokens;
    for (int32_t h = 0; h < num_kv_heads; ++h) {
      const int32_t pair = static_cast<int32_t>(seq) * num_kv_heads + h;
      plan.pair_num_splits[pair] = s.count;
      if (s.count > 1) {
        plan.pair_first_slot[pair] = plan.num_partial_slots;
        plan.num_partial_slots += s.count;
      }
      for (int32_t i = 0; i < s.count; ++i) {
        const int32_t begin = i * slice_tokens;
        const int32_t end = std::min(seq_lens[seq], begin + slice_tokens);
        const int32_t slot = s.count > 1 ? plan.pair_first_slot[pair] + i : -1;
        plan.items.push_back(
            {static_cast<int32_t>(seq), h, begin, end, slot, pair, static_cast<int32_t>(seq)});
      }
    }
  }
  std::stable_sort(plan.items.begin(), plan.items.end(), [](const auto& a, const auto& b) {
    return a.token_end - a.token_begin > b.token_end - b.token_begin;
  });
  return plan;
}

}  // namespace l2kv
