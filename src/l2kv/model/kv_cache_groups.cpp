#include "l2kv/model/kv_cache_groups.h"

#include <algorithm>

namespace l2kv {

KvCacheGroups single_kv_cache_group(const ModelConfig& config) {
  KvCacheGroups g;
  const auto layers = static_cast<int32_t>(config.num_layers);
  g.windows = {0};
  g.layer_group.assign(static_cast<size_t>(layers), 0);
  g.layer_slot.resize(static_cast<size_t>(layers));
  for (int32_t l = 0; l < layers; ++l) g.layer_slot[static_cast<size_t>(l)] = l;
  g.num_slots = layers;
  return g;
}

KvCacheGroups windowed_kv_cache_groups(const ModelConfig& config) {
  if (!config.has_sliding_layers() || config.sliding_window <= 0)
    return single_kv_cache_group(config);
  std::vector<int32_t> full, windowed;
  for (int32_t l = 0; l < static_cast<int32_t>(config.num_layers); ++l)
    (config.is_sliding(l) ? windowed : full).push_back(l);
  KvCacheGroups g;
  g.num_slots = static_cast<int32_t>(full.empty() ? windowed.size() : full.size());
  g.layer_group.assign(static_cast<size_t>(config.num_layers), 0);
  g.layer_slot.assign(static_cast<size_t>(config.num_layers), 0);
  const auto add_groups = [&](const std::vector<int32_t>& layers, int32_t window) {
    for (size_t i = 0; i < layers.size(); ++i) {
      if (i % static_cast<size_t>(g.num_slots) == 0) g.windows.push_back(window);
      g.layer_group[static_cast<size_t>(layers[i])] = g.num_groups() - 1;
      g.layer_slot[static_cast<size_t>(layers[i])] =
          static_cast<int32_t>(i % static_cast<size_t>(g.num_slots));
    }
  };
  add_groups(full, 0);
  add_groups(windowed, static_cast<int32_t>(std::min<int64_t>(config.sliding_window, INT32_MAX)));
  return g;
}

}  // namespace l2kv
