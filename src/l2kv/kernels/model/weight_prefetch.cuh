// Device side of WeightPrefetch (weight_prefetch.h).
#pragma once

#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/model/weight_prefetch.h"

namespace l2kv {

// Block `part` of `parts` prefetches its equal, 16-byte-aligned share of `p` into L2: the
// block's first warp issues bulk prefetches of 16 KB pieces, one per lane at a time, so the
// share's requests start together. Returns at once; the copies finish on their own.
__device__ __forceinline__ void prefetch_share(const WeightPrefetch& p, int64_t part,
                                               int64_t parts) {
  constexpr int64_t kPieceBytes = 16 * 1024;
  if (p.bytes < 16 || threadIdx.x >= 32) return;
  int64_t share = (p.bytes + parts - 1) / parts;
  share += (16 - share % 16) % 16;
  const int64_t begin = part * share;
  const int64_t end = begin + share < p.bytes ? begin + share : p.bytes;
  const auto* base = static_cast<const uint8_t*>(p.data);
  const bool with_hint = p.hint != L2EvictionHint::kNormal;
  const uint64_t policy = with_hint ? ptx::make_l2_policy(p.hint) : 0;
  for (int64_t at = begin + int64_t{threadIdx.x} * kPieceBytes; at < end; at += 32 * kPieceBytes) {
    const auto n = static_cast<uint32_t>(end - at < kPieceBytes ? end - at : kPieceBytes);
    with_hint ? ptx::bulk_prefetch_l2(base + at, n, policy) : ptx::bulk_prefetch_l2(base + at, n);
  }
}

}  // namespace l2kv
