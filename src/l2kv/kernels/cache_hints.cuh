// The PTX of l2kv's memory paths, in one place: L2 prefetch (plain and bulk), L2 eviction
// policies, streaming 16-byte loads, and 16-byte asynchronous global->shared copies. Kernels
// call these by name with a typed L2EvictionHint; no asm appears in kernel bodies.
#pragma once

#include <cstdint>

#include "l2kv/kernels/attention/prefetch_policy.h"

namespace l2kv::ptx {

// A 64-bit L2 cache policy for `.L2::cache_hint` operands.
__device__ __forceinline__ uint64_t make_l2_policy(L2EvictionHint hint) {
  uint64_t policy = 0;
  switch (hint) {
    case L2EvictionHint::kEvictFirst:
      asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
      break;
    case L2EvictionHint::kEvictLast:
      asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(policy));
      break;
    case L2EvictionHint::kNormal:
      asm volatile("createpolicy.fractional.L2::evict_normal.b64 %0, 1.0;" : "=l"(policy));
      break;
  }
  return policy;
}

// Non-blocking prefetch of `bytes` (a multiple of 16, 16-byte aligned) into L2 by the bulk
// copy engine (sm_90). One instruction covers a whole contiguous KV block.
__device__ __forceinline__ void bulk_prefetch_l2(const void* gmem, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(gmem), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_prefetch_l2(const void* gmem, uint32_t bytes,
                                                 uint64_t policy) {
  asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(gmem),
               "r"(bytes), "l"(policy)
               : "memory");
}

// 16-byte load of data read exactly once (decode weights): through the non-coherent path
// without allocating in L1, so streamed bytes do not evict what is re-read from L1 (the
// activations), and asking L2 to fetch the whole 256-byte span on a miss (the GEMV reads
// each weight row in runs of 256 bytes or more). `gmem` 16-byte aligned, read-only while the
// kernel runs.
// Not volatile: the load has no side effect, so the compiler may schedule it freely.
__device__ __forceinline__ uint4 ld_stream_16(const void* gmem) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(gmem));
  return v;
}

// 16-byte async copy global->shared, bypassing L1. `src_bytes` < 16 zero-fills the rest
// (0 reads nothing: used for the masked tail of a tile).
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, uint32_t src_bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(src_bytes)
               : "memory");
}
// A full 16-byte async copy with an L2 cache policy. There is no zero-filling form of it:
// the form with both a source size and a cache policy raised "illegal instruction" on an H200
// for some inputs, so masked rows take the plain copy above.
__device__ __forceinline__ void cp_async_16_hinted(void* smem, const void* gmem, uint64_t policy) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem),
               "l"(policy)
               : "memory");
}
// A 16-byte async copy of streamed data (read once): L1 bypassed, the L2 fetch widened to
// 256 bytes as ld_stream_16 does. `src_bytes` 0 reads nothing and zero-fills.
__device__ __forceinline__ void cp_async_16_stream(void* smem, const void* gmem,
                                                   uint32_t src_bytes) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global.L2::256B [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

}  // namespace l2kv::ptx
