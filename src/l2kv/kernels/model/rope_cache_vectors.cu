#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "l2kv/core/ceil_div.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/kernels/dtype_dispatch.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/paired_rows.h"
#include "l2kv/kernels/model/rope.cuh"
#include "l2kv/kernels/model/rope_cache_vectors.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {
namespace {

constexpr int kPairs = 8;  // pairs a thread rotates: 16 bytes of each half of a head
constexpr int kBlockThreads = 256;
constexpr int kMaxHeadDim = 512;

// Eight 16-bit elements, loaded and stored as one 16-byte vector.
template <typename T>
struct alignas(16) Vec {
  T v[kPairs];
  __device__ __forceinline__ void load(const T* p) {
    *reinterpret_cast<uint4*>(v) = __ldg(reinterpret_cast<const uint4*>(p));
  }
  __device__ __forceinline__ float at(int e) const { return tc::ElementTraits<T>::to_float(v[e]); }
};

// What a pool stores for eight elements: 16 bytes of 16-bit values or 8 of E4M3 codes.
template <typename T, bool kFp8>
__device__ __forceinline__ void store_kv(std::conditional_t<kFp8, uint8_t, T>* p,
                                         const T (&values)[kPairs], float inv_scale) {
  if constexpr (kFp8) {
    alignas(8) uint8_t codes[kPairs];
#pragma unroll
    for (int e = 0; e < kPairs; ++e) codes[e] = kv_stored<true>(values[e], inv_scale);
    *reinterpret_cast<uint2*>(p) = *reinterpret_cast<const uint2*>(codes);
  } else {
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(values);
  }
}

// One thread per (token, head, chunk of eight pairs), chunks fastest, then heads: a warp reads
// whole heads of one row. Thread (t, h, j) rotates the pairs (i + e, i + e + half), i = 8 j,
// e < 8, of head h of token t; the threads of k heads also store v's same elements. The
// arithmetic per element is rope_and_cache_kernel's (bias added in float, rotate_pair's sine,
// cosine and roundings), so the two agree bit for bit.
template <typename T, bool kFp8>
__global__ void __launch_bounds__(kBlockThreads)
    rope_cache_vectors_kernel(const T* qkv, const T* bias, const int32_t* positions,
                              const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                              int32_t q_heads, const PagedKvCache kv, T* q_out, bool pair_rows) {
  // The attention kernel after this one (programmatic dependent launch) may start now: it waits
  // for this grid's writes before it reads them.
  ptx::launch_dependents();
  const int d = kv.head_dim, half = d / 2, chunks = half / kPairs;
  const int heads = q_heads + kv.num_kv_heads;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kBlockThreads + threadIdx.x;
  const int j = static_cast<int>(index % chunks);
  const int head = static_cast<int>(index / chunks % heads);
  const int64_t token = index / chunks / heads;
  if (token >= num_tokens) return;
  const int i = kPairs * j;
  const bool is_q = head < q_heads;
  const int q_dim = q_heads * d, kv_dim = kv.num_kv_heads * d, width = q_dim + 2 * kv_dim;
  const int base = is_q ? head * d : q_dim + (head - q_heads) * d;
  // Where elements i .. i + 7 and i + half .. i + half + 7 of the head lie in its row: in
  // paired order the first are rows 16 j .. 16 j + 7 and their partners the next eight.
  const int at_a = pair_rows ? static_cast<int>(paired_row(i, d)) : i;
  const int at_b = pair_rows ? static_cast<int>(paired_row(i + half, d)) : i + half;
  float freq[kPairs];
#pragma unroll
  for (int e = 0; e < kPairs; ++e) freq[e] = inv_freq[i + e];
  Vec<T> bias_a, bias_b;
  if (bias) bias_a.load(bias + base + at_a), bias_b.load(bias + base + at_b);
  // Launched with `pdl`, this kernel may start while the QKV projection still runs.
  ptx::grid_dependency_wait();
  const float pos = static_cast<float>(positions[token]);
  const int32_t slot = is_q ? 0 : slots[token];  // -1: a pad row whose K/V is not kept
  if (slot < 0) return;
  const T* row = qkv + token * width + base;
  Vec<T> a, b, va, vb;
  a.load(row + at_a);
  b.load(row + at_b);
  if (!is_q) va.load(row + kv_dim + at_a), vb.load(row + kv_dim + at_b);
  alignas(16) T ra[kPairs], rb[kPairs];
#pragma unroll
  for (int e = 0; e < kPairs; ++e) {
    float s, c;
    sincosf(pos * freq[e], &s, &c);
    const float a0 = a.at(e) + (bias ? bias_a.at(e) : 0.f);
    const float b0 = b.at(e) + (bias ? bias_b.at(e) : 0.f);
    rotate_pair_by(a0, b0, s, c, ra[e], rb[e]);
  }
  if (is_q) {
    T* q = q_out + token * q_dim + head * d;
    *reinterpret_cast<uint4*>(q + i) = *reinterpret_cast<const uint4*>(ra);
    *reinterpret_cast<uint4*>(q + i + half) = *reinterpret_cast<const uint4*>(rb);
    return;
  }
  using Stored = std::conditional_t<kFp8, uint8_t, T>;
  const int64_t off = kv.offset(slot / kv.block_size, slot % kv.block_size, head - q_heads);
  Stored* k_pool = static_cast<Stored*>(kv.k_pool);
  Stored* v_pool = static_cast<Stored*>(kv.v_pool);
  const float inv_k_scale = kFp8 ? 1.f / kv.key_scale() : 1.f;
  const float inv_v_scale = kFp8 ? 1.f / kv.value_scale() : 1.f;
  store_kv<T, kFp8>(k_pool + off + i, ra, inv_k_scale);
  store_kv<T, kFp8>(k_pool + off + i + half, rb, inv_k_scale);
  Vec<T> bias_va, bias_vb;
  if (bias) bias_va.load(bias + base + kv_dim + at_a), bias_vb.load(bias + base + kv_dim + at_b);
  alignas(16) T v_a[kPairs], v_b[kPairs];
#pragma unroll
  for (int e = 0; e < kPairs; ++e) {
    v_a[e] = tc::ElementTraits<T>::from_float(va.at(e) + (bias ? bias_va.at(e) : 0.f));
    v_b[e] = tc::ElementTraits<T>::from_float(vb.at(e) + (bias ? bias_vb.at(e) : 0.f));
  }
  store_kv<T, kFp8>(v_pool + off + i, v_a, inv_v_scale);
  store_kv<T, kFp8>(v_pool + off + i + half, v_b, inv_v_scale);
}

}  // namespace

bool rope_cache_vectors_supports(const PagedKvCache& kv, const void* qkv, const void* bias,
                                 const void* q_out) {
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return kv.head_dim > 0 && kv.head_dim % (2 * kPairs) == 0 && kv.head_dim <= kMaxHeadDim &&
         aligned(qkv) && aligned(bias) && aligned(q_out) && aligned(kv.k_pool) &&
         aligned(kv.v_pool);
}

void rope_cache_vectors(const void* qkv, const void* bias, const int32_t* positions,
                        const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                        int32_t q_heads, const PagedKvCache& kv, void* q_out, cudaStream_t stream,
                        bool pdl, bool pair_rows) {
  const int64_t threads = int64_t{num_tokens} * (q_heads + kv.num_kv_heads) * (kv.head_dim / 16);
  with_16bit_type(kv.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto kernel =
        kv.fp8() ? rope_cache_vectors_kernel<T, true> : rope_cache_vectors_kernel<T, false>;
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config =
        launch_config(dim3(static_cast<unsigned>(ceil_div(threads, int64_t{kBlockThreads}))),
                      dim3(kBlockThreads), 0, stream, pdl, attribute);
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, static_cast<const T*>(qkv),
                                       static_cast<const T*>(bias), positions, slots, inv_freq,
                                       num_tokens, q_heads, kv, static_cast<T*>(q_out), pair_rows));
  });
}

}  // namespace l2kv
