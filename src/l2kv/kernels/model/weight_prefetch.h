// L2 prefetch of the weights a decode step reads next. A decode step is a chain of weight
// reads (the projections) broken by kernels that leave HBM idle: RMSNorm, RoPE + KV write,
// SiLU x up, attention at small batches (latency-bound), and each projection's own tail. The
// kernels there can carry a WeightPrefetch: their blocks issue bulk prefetches of the next
// projection's first bytes into L2 (the paper's idea applied to the weights) and go on; the
// projection then finds them in L2. A prefetch is a hint: it never changes a result.
#pragma once

#include <algorithm>
#include <cstdint>

#include "l2kv/kernels/attention/prefetch_policy.h"

namespace l2kv {

struct WeightPrefetch {
  const void* data = nullptr;  // 16-byte aligned
  int64_t bytes = 0;           // a multiple of 16; 0 = none
  L2EvictionHint hint = L2EvictionHint::kNormal;

  // The first min(bytes, max_bytes) bytes of `data`, rounded down to 16; none where `data` is
  // not 16-byte aligned.
  static WeightPrefetch head(const void* data, int64_t bytes, int64_t max_bytes,
                             L2EvictionHint hint) {
    if (data == nullptr || reinterpret_cast<uintptr_t>(data) % 16 != 0) return {};
    const int64_t n = std::min(bytes, max_bytes);
    return {data, n - n % 16, hint};
  }
};

}  // namespace l2kv
