#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "l2kv/core/ceil_div.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/kernels/dtype_dispatch.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/paired_rows.h"
#include "l2kv/kernels/model/rope.cuh"
#include "l2kv/kernels/model/rope_cache_head_groups.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {
namespace {

constexpr int kHeadsPerGroup = 8;  // heads one thread rotates with the same sines and cosines
constexpr int kBlockThreads = 128;
constexpr int kMaxHeadDim = 4 * kBlockThreads;

// Two adjacent 16-bit elements as floats; `at` is even, so the pair is 4-byte aligned.
template <typename T>
__device__ __forceinline__ float2 load_pair(const T* p) {
  return tc::ElementTraits<T>::unpack(__ldg(reinterpret_cast<const uint32_t*>(p)));
}

template <typename T>
__device__ __forceinline__ void store_pair(T* p, T lo, T hi) {
  typename tc::ElementTraits<T>::Pair pair;
  pair.x = lo;
  pair.y = hi;
  *reinterpret_cast<typename tc::ElementTraits<T>::Pair*>(p) = pair;
}

// Grid (token groups, head groups), block (head_dim / 4, tokens): thread x of a token rotates
// the pairs (i, i + half) and (i + 1, i + 1 + half), i = 2x, of up to kHeadsPerGroup heads, all
// loads of the group issued before any rotation. The blocks of k heads also store v. The
// arithmetic per element is rope_and_cache_kernel's (bias added in float, rotate_pair's sine,
// cosine and roundings), so the two agree bit for bit.
template <typename T, bool kFp8>
__global__ void rope_cache_head_groups_kernel(const T* qkv, const T* bias, const int32_t* positions,
                                              const int32_t* slots, const float* inv_freq,
                                              int32_t num_tokens, int32_t q_heads,
                                              const PagedKvCache kv, T* q_out, bool pair_rows) {
  using Traits = tc::ElementTraits<T>;
  // The attention kernel after this one (programmatic dependent launch) may start now: it waits
  // for this grid's writes before it reads them.
  ptx::launch_dependents();
  const int token = blockIdx.x * blockDim.y + threadIdx.y;
  if (token >= num_tokens) return;
  const int d = kv.head_dim, half = d / 2, i = 2 * threadIdx.x;
  const int heads = q_heads + kv.num_kv_heads;
  const int first_head = blockIdx.y * kHeadsPerGroup;
  const int group = min(kHeadsPerGroup, heads - first_head);
  const int q_dim = q_heads * d, kv_dim = kv.num_kv_heads * d, width = q_dim + 2 * kv_dim;
  // Where elements i and i + half of a head lie in its rows (i + 1 and i + 1 + half follow).
  const int at_a = pair_rows ? static_cast<int>(paired_row(i, d)) : i;
  const int at_b = pair_rows ? static_cast<int>(paired_row(i + half, d)) : i + half;
  const float freq0 = inv_freq[i], freq1 = inv_freq[i + 1];
  auto bias_at = [&](int c) { return bias ? Traits::to_float(bias[c]) : 0.f; };
  // Launched with `pdl`, this kernel may start while the QKV projection still runs.
  ptx::grid_dependency_wait();
  const float pos = static_cast<float>(positions[token]);
  const int32_t slot = slots[token];  // -1: a pad row whose K/V is not kept
  float s0, c0, s1, c1;
  sincosf(pos * freq0, &s0, &c0);
  sincosf(pos * freq1, &s1, &c1);
  const T* row = qkv + static_cast<int64_t>(token) * width;
  float2 a[kHeadsPerGroup], b[kHeadsPerGroup], va[kHeadsPerGroup], vb[kHeadsPerGroup];
#pragma unroll
  for (int g = 0; g < kHeadsPerGroup; ++g) {
    if (g >= group) break;
    const int head = first_head + g;
    const int base = head < q_heads ? head * d : q_dim + (head - q_heads) * d;
    a[g] = load_pair(row + base + at_a);
    b[g] = load_pair(row + base + at_b);
    if (head >= q_heads && slot >= 0) {
      va[g] = load_pair(row + base + kv_dim + at_a);
      vb[g] = load_pair(row + base + kv_dim + at_b);
    }
  }
  using Stored = std::conditional_t<kFp8, uint8_t, T>;
  auto store_stored = [](Stored* p, Stored lo, Stored hi) {
    if constexpr (kFp8)
      *reinterpret_cast<uint16_t*>(p) = static_cast<uint16_t>(lo | (hi << 8));
    else
      store_pair(p, lo, hi);
  };
  const float inv_k_scale = kFp8 ? 1.f / kv.key_scale() : 1.f;
  const float inv_v_scale = kFp8 ? 1.f / kv.value_scale() : 1.f;
  Stored* k_pool = static_cast<Stored*>(kv.k_pool);
  Stored* v_pool = static_cast<Stored*>(kv.v_pool);
#pragma unroll
  for (int g = 0; g < kHeadsPerGroup; ++g) {
    if (g >= group) break;
    const int head = first_head + g;
    const bool is_q = head < q_heads;
    if (!is_q && slot < 0) continue;
    const int base = is_q ? head * d : q_dim + (head - q_heads) * d;
    const float a0 = a[g].x + bias_at(base + at_a), a1 = a[g].y + bias_at(base + at_a + 1);
    const float b0 = b[g].x + bias_at(base + at_b), b1 = b[g].y + bias_at(base + at_b + 1);
    T ra0, rb0, ra1, rb1;
    rotate_pair_by(a0, b0, s0, c0, ra0, rb0);
    rotate_pair_by(a1, b1, s1, c1, ra1, rb1);
    if (is_q) {
      T* q = q_out + static_cast<int64_t>(token) * q_dim + base;
      store_pair(q + i, ra0, ra1);
      store_pair(q + i + half, rb0, rb1);
      continue;
    }
    const int64_t off = kv.offset(slot / kv.block_size, slot % kv.block_size, head - q_heads);
    store_stored(k_pool + off + i, kv_stored<kFp8>(ra0, inv_k_scale),
                 kv_stored<kFp8>(ra1, inv_k_scale));
    store_stored(k_pool + off + i + half, kv_stored<kFp8>(rb0, inv_k_scale),
                 kv_stored<kFp8>(rb1, inv_k_scale));
    const int v_base = base + kv_dim;
    const T va0 = Traits::from_float(va[g].x + bias_at(v_base + at_a));
    const T va1 = Traits::from_float(va[g].y + bias_at(v_base + at_a + 1));
    const T vb0 = Traits::from_float(vb[g].x + bias_at(v_base + at_b));
    const T vb1 = Traits::from_float(vb[g].y + bias_at(v_base + at_b + 1));
    store_stored(v_pool + off + i, kv_stored<kFp8>(va0, inv_v_scale),
                 kv_stored<kFp8>(va1, inv_v_scale));
    store_stored(v_pool + off + i + half, kv_stored<kFp8>(vb0, inv_v_scale),
                 kv_stored<kFp8>(vb1, inv_v_scale));
  }
}

}  // namespace

bool rope_cache_head_groups_supports(const PagedKvCache& kv, const void* qkv, const void* q_out) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 4 == 0; };
  return kv.head_dim > 0 && kv.head_dim % 4 == 0 && kv.head_dim <= kMaxHeadDim && aligned(qkv) &&
         aligned(q_out) && aligned(kv.k_pool) && aligned(kv.v_pool);
}

void rope_cache_head_groups(const void* qkv, const void* bias, const int32_t* positions,
                            const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                            int32_t q_heads, const PagedKvCache& kv, void* q_out,
                            cudaStream_t stream, bool pdl, bool pair_rows) {
  const int threads_per_token = kv.head_dim / 4;
  const int tokens_per_block = std::max(1, kBlockThreads / threads_per_token);
  const int heads = q_heads + kv.num_kv_heads;
  with_16bit_type(kv.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto kernel =
        kv.fp8() ? rope_cache_head_groups_kernel<T, true> : rope_cache_head_groups_kernel<T, false>;
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = launch_config(
        dim3(static_cast<unsigned>(ceil_div(num_tokens, tokens_per_block)),
             static_cast<unsigned>(ceil_div(heads, kHeadsPerGroup))),
        dim3(static_cast<unsigned>(threads_per_token), static_cast<unsigned>(tokens_per_block)), 0,
        stream, pdl, attribute);
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<const T*>(qkv),
                                       static_cast<const T*>(bias), positions, slots, inv_freq,
                                       num_tokens, q_heads, kv, static_cast<T*>(q_out), pair_rows));
  });
}

}  // namespace l2kv
