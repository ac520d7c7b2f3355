// How a decode-attention kernel uses L2 prefetch: a typed, run-time parameter of the API.
#pragma once

#include <cstdint>
#include <string>

namespace l2kv {

enum class PrefetchMode : uint8_t {
  kOff,            // no L2 prefetch
  kFixedDistance,  // prefetch `distance` steps ahead of the step being computed
  kAuto,           // each kernel's measured rule: prefetch only where it paid on the H100
};

// Cache-eviction priority attached to prefetches (and, for kEvictFirst, to streaming loads).
enum class L2EvictionHint : uint8_t { kNormal, kEvictFirst, kEvictLast };

struct PrefetchPolicy {
  PrefetchMode mode = PrefetchMode::kOff;
  int32_t distance = 1;  // steps ahead; a step is one warp iteration (paged_v1) or one tile (split)
  L2EvictionHint prefetch_hint = L2EvictionHint::kNormal;
  L2EvictionHint load_hint = L2EvictionHint::kNormal;
  // paged_v1 under GQA: only the first query head of a group prefetches (the group's other
  // thread blocks read the same KV from L2). False = every head prefetches, as Algorithm 1.
  bool group_leader_only = true;
  // Programmatic dependent launch (split kernel): the kernel starts while the kernel before it
  // (RoPE + KV write) still runs, prefetches into L2 the KV of its first tiles that the previous
  // kernel does not write (tokens before each sequence's newest), then waits on the grid
  // dependency before it reads Q or the newest token's K/V.
  bool pdl = false;

  static PrefetchPolicy off() { return {}; }
  static PrefetchPolicy fixed(int32_t steps) { return {PrefetchMode::kFixedDistance, steps}; }
  static PrefetchPolicy automatic() { return {PrefetchMode::kAuto, 0}; }
  bool enabled() const { return mode != PrefetchMode::kOff; }
};

// "off", "on:N" (fixed distance N), "auto"; optional suffixes: "+evict_last" / "+evict_first"
// set the prefetch hint, "+stream" marks KV loads evict_first, "+every_head" makes every
// query head of a GQA group prefetch in paged_v1, "+pdl" launches the split kernel with
// programmatic dependent launch. Throws l2kv::Error otherwise.
PrefetchPolicy parse_prefetch_policy(const std::string& text);
std::string to_string(const PrefetchPolicy& policy);

}  // namespace l2kv
