#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "l2kv/core/ceil_div.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/core/per_device.h"
#include "l2kv/kernels/block_reduce.cuh"
#include "l2kv/kernels/cluster_reduce.cuh"
#include "l2kv/kernels/dtype_dispatch.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/fp8_activations.cuh"
#include "l2kv/kernels/model/head_norm.cuh"
#include "l2kv/kernels/model/kv_scales.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/model/paired_rows.h"
#include "l2kv/kernels/model/rope.cuh"
#include "l2kv/kernels/model/rope_cache_vectors.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv::ops {
namespace {

constexpr int kThreads = 256;

// Decode-sized batches make these kernels latency-bound: a row is a few KB, so what costs is the
// number of dependent round trips to memory, not bytes. Each kernel below therefore issues all of
// a thread's loads before it uses any of them (16-byte vectors of 8 elements, loops unrolled), so
// a row costs one or two memory latencies; the strided fallbacks serve widths that are not a
// multiple of 8.
constexpr int kVec = 8;                // 16-bit elements per 16-byte vector
constexpr int kNormVecsPerThread = 4;  // vectors a thread of a row kernel holds (RowPart)
constexpr int kMaxThreads = 1024;
// Threads of a block that holds part of a row in registers (RowPart: add_rmsnorm and the fp8
// gated_mul): about 100 registers each.
constexpr int kRowThreads = 256;
// From this many rows on, gated_mul's fp8 codes of a 16-bit gate_up come from the op followed by
// quantize_rows_fp8 rather than the fused kernel (prompt-sized steps; see gated_mul).
constexpr int32_t kSeparateCodesMinRows = 256;

template <typename T>
struct Vec8 {
  float v[kVec];
  __device__ __forceinline__ void load(const T* p) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) v[i] = tc::ElementTraits<T>::to_float(e[i]);
  }
  __device__ __forceinline__ void store(T* p) const {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec; ++i) e[i] = tc::ElementTraits<T>::from_float(v[i]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
};

__device__ __forceinline__ void load_f32x8(const float* p, float (&v)[kVec]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ __forceinline__ void store_f32x8(float* p, const float (&v)[kVec]) {
  reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}

// One block per token. With `sumsq`, also the row's sum of squares (what a fused RMSNorm
// prologue of the first QKV projection reads).
template <typename T>
__global__ void embed_kernel(const int32_t* tokens, const T* embed, int32_t hidden, float* residual,
                             RowSumsq* sumsq, float scale) {
  using Traits = tc::ElementTraits<T>;
  const int t = blockIdx.x;
  const T* row = embed + static_cast<int64_t>(tokens[t]) * hidden;
  float sum = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float x = Traits::to_float(row[i]) * scale;
    residual[static_cast<int64_t>(t) * hidden + i] = x;
    sum += x * x;
  }
  if (sumsq == nullptr) return;
  sum = block_sum(sum);
  if (threadIdx.x == 0) sumsq[t] = to_row_sumsq(sum);
}

// The scale of add's row that RMS-normalizes it (add_weight set: Gemma's output norms), else 1:
// a first pass over the row, which the add below reads again from L1.
template <typename T>
__device__ __forceinline__ float addend_rms_scale(const T* add, const T* add_weight, float eps,
                                                  int32_t hidden, int64_t base) {
  if (add == nullptr || add_weight == nullptr) return 1.f;
  using Traits = tc::ElementTraits<T>;
  float sum = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float a = Traits::to_float(add[base + i]);
    sum += a * a;
  }
  return __frsqrt_rn(block_sum(sum) / hidden + eps);
}

// The vectors of a row one block of a cluster owns: a row is split into as many parts as the
// cluster has blocks (RowPart below), and thread j of a part owns its vectors j, j + blockDim, ...
struct RowPart {
  int64_t row;
  int first, end;  // vectors [first, end) of the row
  __device__ static RowPart of_block(int32_t width) {
    const int parts = static_cast<int>(cooperative_groups::this_cluster().num_blocks());
    const int vecs = width / kVec, per_part = (vecs + parts - 1) / parts;
    RowPart p;
    p.row = blockIdx.x / parts;
    p.first = static_cast<int>(blockIdx.x % parts) * per_part;
    p.end = min(vecs, p.first + per_part);
    return p;
  }
  // Element offset in the row of the thread's j-th vector, or -1 past the part's end.
  __device__ int element(int j) const {
    const int v = first + static_cast<int>(threadIdx.x) + j * static_cast<int>(blockDim.x);
    return v < end ? v * kVec : -1;
  }
};

// A row per cluster of blocks (hidden % 8 == 0): each block holds its part of the row in
// registers; the row's sum of squares and, for fp8 codes, its largest value are reduced over the
// cluster.
template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    add_rmsnorm_kernel(float* residual, const T* add, const T* weight, float eps, int32_t hidden,
                       T* out, ExpertSum experts, const T* add_weight, Fp8Product add_fp8,
                       Fp8Rows out_fp8) {
  // The projection behind this kernel may be launched with PDL and start now: it waits for
  // this grid before it reads `out`.
  ptx::launch_dependents();
  ptx::grid_dependency_wait();  // launched with PDL itself: `add` is the kernel ahead's output
  const RowPart part = RowPart::of_block(hidden);
  const int64_t base = part.row * hidden;
  // Gemma's addend norm reads the whole addend row in every block of the cluster.
  const float add_scale = addend_rms_scale(add, add_weight, eps, hidden, base);
  float x[kNormVecsPerThread][kVec];
  Vec8<T> gamma[kNormVecsPerThread];
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kNormVecsPerThread; ++j) {
    const int i = part.element(j);
    if (i < 0) continue;
    load_f32x8(residual + base + i, x[j]);
    gamma[j].load(weight + i);
    if (add) {
      Vec8<T> a;
      a.load(add + base + i);
      if (add_weight) {
        Vec8<T> w;
        w.load(add_weight + i);
#pragma unroll
        for (int e = 0; e < kVec; ++e) x[j][e] += a.v[e] * add_scale * w.v[e];
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) x[j][e] += a.v[e];
      }
    }
    if (add_fp8) {
      float a[kVec];
      fp8_rows::load_rescaled<T>(add_fp8, hidden, part.row, i, a);
#pragma unroll
      for (int e = 0; e < kVec; ++e) x[j][e] += a[e];
    }
    if (experts.y) {
      const int64_t slot0 = part.row * experts.top_k;
      for (int k = 0; k < experts.top_k; ++k) {
        Vec8<T> a;
        const int64_t row = experts.slot_rows ? experts.slot_rows[slot0 + k] : slot0 + k;
        a.load(static_cast<const T*>(experts.y) + row * hidden + i);
        const float w = experts.weights[slot0 + k];
#pragma unroll
        for (int e = 0; e < kVec; ++e) x[j][e] += w * a.v[e];
      }
    }
    if (add || add_fp8 || experts.y) store_f32x8(residual + base + i, x[j]);
#pragma unroll
    for (int e = 0; e < kVec; ++e) sum += x[j][e] * x[j][e];
  }
  const float scale = __frsqrt_rn(cluster_sum(block_sum(sum)) / hidden + eps);  // correctly rounded
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < kNormVecsPerThread; ++j) {
    const int i = part.element(j);
    if (i < 0) continue;
    Vec8<T> y;
#pragma unroll
    for (int e = 0; e < kVec; ++e) y.v[e] = gamma[j].v[e] * (x[j][e] * scale);
    y.store(out + base + i);
    if (!out_fp8) continue;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {  // kept as stored, for the codes
      x[j][e] = tc::ElementTraits<T>::to_float(tc::ElementTraits<T>::from_float(y.v[e]));
      amax = fmaxf(amax, fabsf(x[j][e]));
    }
  }
  if (!out_fp8) return;
  const float code_scale = fp8_rows::row_scale(cluster_max(block_max(amax)));
  if (threadIdx.x == 0 && part.first == 0) out_fp8.scales[part.row] = code_scale;
#pragma unroll
  for (int j = 0; j < kNormVecsPerThread; ++j) {
    const int i = part.element(j);
    if (i >= 0) fp8_rows::store_codes(out_fp8.codes + base + i, x[j], code_scale);
  }
}

// The strided form for a hidden size that is not a multiple of 8.
template <typename T>
__global__ void add_rmsnorm_strided_kernel(float* residual, const T* add, const T* weight,
                                           float eps, int32_t hidden, T* out, ExpertSum experts,
                                           const T* add_weight) {
  ptx::launch_dependents();
  ptx::grid_dependency_wait();
  using Traits = tc::ElementTraits<T>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  const float add_scale = addend_rms_scale(add, add_weight, eps, hidden, base);
  float sum = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float x = residual[base + i];
    if (add)
      x += Traits::to_float(add[base + i]) *
           (add_weight ? add_scale * Traits::to_float(add_weight[i]) : 1.f);
    if (experts.y) {
      const int64_t slot0 = static_cast<int64_t>(blockIdx.x) * experts.top_k;
      for (int k = 0; k < experts.top_k; ++k) {
        const int64_t row = experts.slot_rows ? experts.slot_rows[slot0 + k] : slot0 + k;
        x += experts.weights[slot0 + k] *
             Traits::to_float(static_cast<const T*>(experts.y)[row * hidden + i]);
      }
    }
    if (add || experts.y) residual[base + i] = x;
    sum += x * x;
  }
  const float scale = __frsqrt_rn(block_sum(sum) / hidden + eps);  // correctly rounded
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    out[base + i] = Traits::from_float(Traits::to_float(weight[i]) * (residual[base + i] * scale));
}

// Tokens per block of rope_and_cache: a thread loads its pair of all of them before it computes
// any, so a prompt's thousands of tokens take a few rounds of loads instead of one per token
// (one token per block cost ~100 us a layer at 2,064 tokens on an H200: 82,560 blocks of one
// load round each).
constexpr int kRopeTokensPerBlock = 8;

// One block per (kRopeTokensPerBlock tokens, head) of q and k, thread i rotating the pair
// (i, i + head_dim / 2) of each token; the blocks of k heads also write that head's v elements
// i and i + head_dim / 2. kFp8: K and V are stored as E4M3 of their 16-bit values divided by
// the layer's scale. With q_norm / k_norm (Qwen3), each head is RMS-normalized before RoPE: the
// block sums its squares (the one case that synchronizes the block). `pair_rows`: qkv and bias
// are in paired row order (paired_rows.h), else in feature order. With `qkv_fp8` set, the
// projection is read from that fp8 product, scaled back (qkv unused).
template <typename T, bool kFp8>
__global__ void rope_and_cache_kernel(const T* qkv, const T* bias, const int32_t* positions,
                                      const int32_t* slots, const float* inv_freq,
                                      int32_t num_tokens, int32_t q_heads, const PagedKvCache kv,
                                      T* q_out, const T* q_norm, const T* k_norm, float norm_eps,
                                      bool pair_rows, Fp8Product qkv_fp8) {
  using Traits = tc::ElementTraits<T>;
  constexpr int kTokens = kRopeTokensPerBlock;
  // An attention kernel launched with programmatic dependent launch may start now: it waits for
  // this grid's writes before it reads them, and meanwhile prefetches older KV into L2.
  ptx::launch_dependents();
  const int first = blockIdx.x * kTokens, head = blockIdx.y, i = threadIdx.x;
  const int tokens = min(kTokens, num_tokens - first);
  const int d = kv.head_dim, half = d / 2;
  const int q_dim = q_heads * d, kv_dim = kv.num_kv_heads * d, width = q_dim + 2 * kv_dim;
  const bool is_q = head < q_heads;
  const int base = is_q ? head * d : q_dim + (head - q_heads) * d;
  // Where the head's elements i and i + half lie in a row of qkv (and of bias).
  const int at_a = pair_rows ? static_cast<int>(paired_row(i, d)) : i;
  const int at_b = pair_rows ? static_cast<int>(paired_row(i + half, d)) : i + half;
  const float freq = inv_freq[i];
  auto bias_at = [&](int c) { return bias ? Traits::to_float(bias[c]) : 0.f; };
  const float bias_a = bias_at(base + at_a), bias_b = bias_at(base + at_b);
  const float bias_va = is_q ? 0.f : bias_at(base + kv_dim + at_a);
  const float bias_vb = is_q ? 0.f : bias_at(base + kv_dim + at_b);
  const T* norm = is_q ? q_norm : k_norm;  // the same for the whole block
  const float gamma_a = norm ? Traits::to_float(norm[i]) : 1.f;
  const float gamma_b = norm ? Traits::to_float(norm[i + half]) : 1.f;
  // Launched that way itself (rope_and_cache's `pdl`), this kernel may start while the QKV
  // projection still runs: nothing it writes is read before the projection's writes are visible.
  ptx::grid_dependency_wait();
  float a[kTokens], b[kTokens], va[kTokens], vb[kTokens];
  int32_t slot[kTokens];
  float pos[kTokens];
#pragma unroll
  for (int k = 0; k < kTokens; ++k) {
    a[k] = b[k] = va[k] = vb[k] = 0.f;
    slot[k] = -1;
    pos[k] = 0.f;
    if (k >= tokens) continue;
    const int64_t t = first + k;
    auto at = [&](int c) {
      return qkv_fp8 ? fp8_rows::rescaled<T>(qkv_fp8.product[t * width + c], qkv_fp8.row_scales[t],
                                             qkv_fp8.col_scales[c])
                     : Traits::to_float(qkv[t * width + c]);
    };
    a[k] = at(base + at_a) + bias_a;
    b[k] = at(base + at_b) + bias_b;
    pos[k] = static_cast<float>(positions[t]);
    if (!is_q) {
      slot[k] = slots[t];  // -1: a pad row whose K/V is not kept
      va[k] = at(base + kv_dim + at_a) + bias_va;
      vb[k] = at(base + kv_dim + at_b) + bias_vb;
    }
  }
  if (norm) {
    // The norm reads the projection as transformers has it: biased and rounded to T. One
    // barrier for all the block's tokens.
    __shared__ float partial[kTokens][kMaxThreads / 32];
    const int warp = i / 32, lanes = min(32, half - warp * 32);
#pragma unroll
    for (int k = 0; k < kTokens; ++k) {
      a[k] = Traits::to_float(Traits::from_float(a[k]));
      b[k] = Traits::to_float(Traits::from_float(b[k]));
      const float sum = warp_sum_leading(pair_sumsq(a[k], b[k]), lanes);
      if (i % 32 == 0) partial[k][warp] = sum;
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTokens; ++k) {
      float total = 0.f;
      for (int w = 0; w < (half + 31) / 32; ++w) total += partial[k][w];
      const float scale = head_rms_scale(total, d, norm_eps);
      a[k] = head_norm<T>(a[k], scale, gamma_a);
      b[k] = head_norm<T>(b[k], scale, gamma_b);
    }
  }
  using Stored = std::conditional_t<kFp8, uint8_t, T>;
  const float inv_k_scale = kFp8 ? 1.f / kv.key_scale() : 1.f;
  const float inv_v_scale = kFp8 ? 1.f / kv.value_scale() : 1.f;
  Stored* k_pool = static_cast<Stored*>(kv.k_pool);
  Stored* v_pool = static_cast<Stored*>(kv.v_pool);
#pragma unroll
  for (int k = 0; k < kTokens; ++k) {
    if (k >= tokens) break;
    T ra, rb;
    rotate_pair(a[k], b[k], pos[k], freq, ra, rb);
    if (is_q) {
      T* q = q_out + static_cast<int64_t>(first + k) * q_dim + base;
      q[i] = ra;
      q[i + half] = rb;
      continue;
    }
    if (slot[k] < 0) continue;
    const int64_t off = kv.offset(slot[k] / kv.block_size, slot[k] % kv.block_size, head - q_heads);
    k_pool[off + i] = kv_stored<kFp8>(ra, inv_k_scale);
    k_pool[off + i + half] = kv_stored<kFp8>(rb, inv_k_scale);
    v_pool[off + i] = kv_stored<kFp8>(Traits::from_float(va[k]), inv_v_scale);
    v_pool[off + i + half] = kv_stored<kFp8>(Traits::from_float(vb[k]), inv_v_scale);
  }
}

// One block per token: the largest |K| and |V| the rope kernel would store for it, folded into
// the layer's two scales with an atomic max (scales start at 0; a positive float's bits order
// as an int's). Every block contributes at least kMinKvScale.
template <typename T>
__global__ void kv_amax_kernel(const T* qkv, const T* bias, const int32_t* positions,
                               const int32_t* slots, const float* inv_freq, int32_t q_heads,
                               const PagedKvCache kv, float* scales, const T* k_norm,
                               float norm_eps, bool pair_rows) {
  using Traits = tc::ElementTraits<T>;
  const int t = blockIdx.x;
  const int d = kv.head_dim, half = d / 2;
  const int q_dim = q_heads * d, kv_dim = kv.num_kv_heads * d, width = q_dim + 2 * kv_dim;
  const T* row = qkv + static_cast<int64_t>(t) * width;
  // Element c of the row in feature order (heads start at multiples of d in either order).
  auto value = [&](int c) {
    const int i = pair_rows ? c - c % d + static_cast<int>(paired_row(c % d, d)) : c;
    return Traits::to_float(row[i]) + (bias ? Traits::to_float(bias[i]) : 0.f);
  };
  float k_max = 0.f, v_max = 0.f;
  if (slots[t] >= 0) {  // -1: a pad row, whose K/V is not kept
    const float pos = static_cast<float>(positions[t]);
    if (k_norm == nullptr) {
      for (int p = threadIdx.x; p < kv.num_kv_heads * half; p += blockDim.x) {
        const int base = q_dim + (p / half) * d, i = p % half;
        T ra, rb;
        rotate_pair(value(base + i), value(base + i + half), pos, inv_freq[i], ra, rb);
        k_max = fmaxf(k_max, fmaxf(fabsf(Traits::to_float(ra)), fabsf(Traits::to_float(rb))));
      }
    } else {
      // A warp per head. Its sum of squares is rope_and_cache's: the head's pairs taken 32 at
      // a time as that kernel's warps take them, summed by the same steps in the same order.
      const int lane = static_cast<int>(threadIdx.x % 32);
      auto rounded = [&](int c) { return Traits::to_float(Traits::from_float(value(c))); };
      for (int h = static_cast<int>(threadIdx.x / 32); h < kv.num_kv_heads;
           h += static_cast<int>(blockDim.x / 32)) {
        const int base = q_dim + h * d;
        float total = 0.f;
        for (int first = 0; first < half; first += 32) {
          const int lanes = min(32, half - first), i = first + lane;
          float sum = 0.f;
          if (lane < lanes)
            sum = warp_sum_leading(pair_sumsq(rounded(base + i), rounded(base + i + half)), lanes);
          total += __shfl_sync(0xffffffffu, sum, 0);
        }
        const float scale = head_rms_scale(total, d, norm_eps);
        for (int i = lane; i < half; i += 32) {
          const float a = head_norm<T>(rounded(base + i), scale, Traits::to_float(k_norm[i]));
          const float b =
              head_norm<T>(rounded(base + i + half), scale, Traits::to_float(k_norm[i + half]));
          T ra, rb;
          rotate_pair(a, b, pos, inv_freq[i], ra, rb);
          k_max = fmaxf(k_max, fmaxf(fabsf(Traits::to_float(ra)), fabsf(Traits::to_float(rb))));
        }
      }
    }
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x)
      v_max = fmaxf(v_max, fabsf(Traits::to_float(Traits::from_float(value(q_dim + kv_dim + i)))));
  }
  for (int m = 16; m >= 1; m /= 2) {
    k_max = fmaxf(k_max, __shfl_xor_sync(0xffffffffu, k_max, m));
    v_max = fmaxf(v_max, __shfl_xor_sync(0xffffffffu, v_max, m));
  }
  __shared__ float partial[2][kThreads / 32];
  if (threadIdx.x % 32 == 0) {
    partial[0][threadIdx.x / 32] = k_max;
    partial[1][threadIdx.x / 32] = v_max;
  }
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int w = 1; w < kThreads / 32; ++w) {
    k_max = fmaxf(k_max, partial[0][w]);
    v_max = fmaxf(v_max, partial[1][w]);
  }
  atomicMax(reinterpret_cast<int*>(scales),
            __float_as_int(kv_scale_from_amax(k_max, kKvScaleKeyRange)));
  atomicMax(reinterpret_cast<int*>(scales + 1),
            __float_as_int(kv_scale_from_amax(v_max, kKvScaleValueRange)));
}

// The gate's activation: SiLU (SwiGLU) or GELU's tanh form (GeGLU), transformers'
// gelu_pytorch_tanh 0.5 g (1 + tanh(y)), written as g / (1 + exp(-2 y)): the same function,
// without the cancellation of 1 + tanh(y) that costs the tanh form its accuracy for gates below
// about -4 in float.
template <bool kGelu>
__device__ __forceinline__ float gate_activation(float g) {
  if constexpr (kGelu) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    return g / (1.f + __expf(-2.f * kSqrt2OverPi * (g + 0.044715f * g * g * g)));
  } else {
    return g / (1.f + __expf(-g));
  }
}

// Grid (vector blocks, tokens): thread j of block x handles the 8 elements of vector
// x * blockDim + j of its token (inter % 8 == 0). kInterleaved: gate and up alternate in groups
// of 8 (gemv.h's kSiluMul layout), so features i .. i + 7 have their gate at 2 i and up at
// 2 i + 8.
template <typename T, bool kInterleaved, bool kGelu>
__global__ void gated_mul_kernel(const T* gate_up, int32_t inter, T* out) {
  ptx::launch_dependents();  // as add_rmsnorm_kernel: the down projection may start early
  ptx::grid_dependency_wait();
  const int64_t t = blockIdx.y;
  const int i = (static_cast<int>(blockIdx.x) * static_cast<int>(blockDim.x) +
                 static_cast<int>(threadIdx.x)) *
                kVec;
  if (i >= inter) return;
  Vec8<T> g, u;
  g.load(gate_up + t * 2 * inter + (kInterleaved ? 2 * i : i));
  u.load(gate_up + t * 2 * inter + (kInterleaved ? 2 * i + kVec : inter + i));
#pragma unroll
  for (int e = 0; e < kVec; ++e) g.v[e] = gate_activation<kGelu>(g.v[e]) * u.v[e];
  g.store(out + t * inter + i);
}

// gated_mul with an fp8 product for gate_up and / or fp8 codes of its output: a row per cluster
// of blocks, each holding its part of the row in registers (RowPart); the codes' scale needs the
// row's largest value, reduced over the cluster. (One block per row, re-reading its own output
// for the codes, ran 16-64 blocks on 132 SMs at decode batch sizes.)
template <typename T, bool kInterleaved, bool kGelu>
__global__ void __launch_bounds__(kRowThreads)
    gated_mul_fp8_kernel(const T* gate_up, Fp8Product gate_up_fp8, int32_t inter, T* out,
                         Fp8Rows out_fp8) {
  ptx::launch_dependents();
  ptx::grid_dependency_wait();
  using Traits = tc::ElementTraits<T>;
  const RowPart part = RowPart::of_block(inter);
  const int64_t t = part.row;
  float y[kNormVecsPerThread][kVec];
  float amax = 0.f;
#pragma unroll
  for (int j = 0; j < kNormVecsPerThread; ++j) {
    const int i = part.element(j);
    if (i < 0) continue;
    const int64_t gate_col = kInterleaved ? 2 * i : i;
    const int64_t up_col = kInterleaved ? 2 * i + kVec : inter + i;
    Vec8<T> g, u;
    if (gate_up_fp8) {
      fp8_rows::load_rescaled<T>(gate_up_fp8, 2 * inter, t, gate_col, g.v);
      fp8_rows::load_rescaled<T>(gate_up_fp8, 2 * inter, t, up_col, u.v);
    } else {
      g.load(gate_up + t * 2 * inter + gate_col);
      u.load(gate_up + t * 2 * inter + up_col);
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) g.v[e] = gate_activation<kGelu>(g.v[e]) * u.v[e];
    g.store(out + t * inter + i);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {  // as stored, for the codes
      y[j][e] = Traits::to_float(Traits::from_float(g.v[e]));
      amax = fmaxf(amax, fabsf(y[j][e]));
    }
  }
  if (!out_fp8) return;
  const float code_scale = fp8_rows::row_scale(cluster_max(block_max(amax)));
  if (threadIdx.x == 0 && part.first == 0) out_fp8.scales[t] = code_scale;
#pragma unroll
  for (int j = 0; j < kNormVecsPerThread; ++j) {
    const int i = part.element(j);
    if (i >= 0) fp8_rows::store_codes(out_fp8.codes + t * inter + i, y[j], code_scale);
  }
}

// The strided form for an intermediate size that is not a multiple of 8: one block per token.
template <typename T, bool kGelu>
__global__ void gated_mul_strided_kernel(const T* gate_up, int32_t inter, T* out) {
  ptx::launch_dependents();
  ptx::grid_dependency_wait();
  using Traits = tc::ElementTraits<T>;
  const int64_t t = blockIdx.x;
  for (int i = threadIdx.x; i < inter; i += blockDim.x) {
    const float g = Traits::to_float(gate_up[t * 2 * inter + i]);
    const float u = Traits::to_float(gate_up[t * 2 * inter + inter + i]);
    out[t * inter + i] = Traits::from_float(gate_activation<kGelu>(g) * u);
  }
}

// weighted_silu_mul: grid (vector blocks, tokens) as gated_mul_kernel's, over a float32
// product. Block (0, 0) clears the next accumulator once the kernel ahead has finished (its
// last reader ran before that kernel).
template <typename T, bool kInterleaved>
__global__ void weighted_silu_mul_kernel(const float* gate_up, RowRmsScale rms, int32_t inter,
                                         T* out) {
  ptx::launch_dependents();
  ptx::grid_dependency_wait();
  using Traits = tc::ElementTraits<T>;
  const int64_t t = blockIdx.y;
  if (rms.clear_sumsq != nullptr && blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x < gridDim.y)
    rms.clear_sumsq[threadIdx.x] = 0;
  const int i = (static_cast<int>(blockIdx.x) * static_cast<int>(blockDim.x) +
                 static_cast<int>(threadIdx.x)) *
                kVec;
  if (i >= inter) return;
  const float* row = gate_up + t * 2 * inter;
  const auto* g4 = reinterpret_cast<const float4*>(row + (kInterleaved ? 2 * i : i));
  const auto* u4 = reinterpret_cast<const float4*>(row + (kInterleaved ? 2 * i + kVec : inter + i));
  // The product's loads and the row's sum of squares in flight together: one round trip.
  const float4 loaded[4] = {g4[0], g4[1], u4[0], u4[1]};
  const float scale =
      __frsqrt_rn(row_sumsq_value(rms.sumsq[t]) / static_cast<float>(rms.width) + rms.eps);
  const float* g = &loaded[0].x;
  const float* u = &loaded[2].x;
  Vec8<T> y;
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    const float gate = Traits::to_float(Traits::from_float(g[e] * scale));
    const float up = Traits::to_float(Traits::from_float(u[e] * scale));
    y.v[e] = gate_activation<false>(gate) * up;
  }
  y.store(out + t * inter + i);
}

__global__ void soft_cap_kernel(float* values, int64_t count, float cap) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    values[i] = cap * tanhf(values[i] / cap);
}

__global__ void gather_rows_kernel(const uint16_t* in, const int32_t* rows, int32_t width,
                                   uint16_t* out) {
  const int64_t r = blockIdx.x;
  for (int i = threadIdx.x; i < width; i += blockDim.x)
    out[r * width + i] = in[static_cast<int64_t>(rows[r]) * width + i];
}

// The launch of a kernel that gives each row a cluster of blocks (RowPart): `rows` x parts
// blocks, parts a power of two up to 8: as many as a row needs at kRowThreads threads of
// kNormVecsPerThread vectors each, then doubled while the grid has fewer blocks than the GPU has
// SMs and each part keeps at least 32 vectors (a row alone in a block left most SMs idle at
// decode batch sizes).
class RowClusterLaunch {
 public:
  static constexpr int kMaxParts = 8;
  static constexpr int kMaxWidth = kMaxParts * kRowThreads * kNormVecsPerThread * kVec;

  RowClusterLaunch(int32_t rows, int32_t width, cudaStream_t stream, bool pdl) {
    constexpr int kMinVecsPerPart = 32;
    if (width > kMaxWidth)
      throw Error("a row of " + std::to_string(width) + " elements is over the " +
                  std::to_string(kMaxWidth) + " a cluster of blocks holds");
    const int vecs = width / kVec, sms = current_device_sm_count();
    int parts = 1;
    while (vecs > parts * kRowThreads * kNormVecsPerThread) parts *= 2;
    while (parts < kMaxParts && int64_t{rows} * parts < sms &&
           vecs / (2 * parts) >= kMinVecsPerPart)
      parts *= 2;
    // Split rows take their part in as few vectors per thread as they can; whole rows (many
    // rows: prompts) in as few threads as hold them in kNormVecsPerThread vectors each, which
    // measured faster there (bench/NOTES.md, "Row kernels as clusters of blocks").
    const int per_part = ceil_div(vecs, parts);
    const int per_thread = parts > 1 ? ceil_div(per_part, kRowThreads) : kNormVecsPerThread;
    const int threads = std::max(32, (ceil_div(per_part, per_thread) + 31) / 32 * 32);
    config_ = launch_config(dim3(static_cast<unsigned>(rows * parts)), dim3(threads), 0, stream,
                            pdl, static_cast<unsigned>(parts), attributes_);
  }
  RowClusterLaunch(const RowClusterLaunch&) = delete;
  RowClusterLaunch& operator=(const RowClusterLaunch&) = delete;
  const cudaLaunchConfig_t* config() const { return &config_; }

 private:
  cudaLaunchAttribute attributes_[2];
  cudaLaunchConfig_t config_;
};
static_assert(RowClusterLaunch::kMaxWidth >= kFp8OpsMaxWidth);

void gated_mul_fp8(DType dtype, const void* gate_up, int32_t num_tokens, int32_t inter, void* out,
                   cudaStream_t stream, bool pdl, bool interleaved, GateActivation activation,
                   const Fp8Product& gate_up_fp8, const Fp8Rows& out_fp8) {
  const RowClusterLaunch launch(num_tokens, inter, stream, pdl);
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Kernel = void (*)(const T*, Fp8Product, int32_t, T*, Fp8Rows);
    const bool gelu = activation == GateActivation::kGeluTanh;
    const Kernel kernel = interleaved ? (gelu ? Kernel{gated_mul_fp8_kernel<T, true, true>}
                                              : Kernel{gated_mul_fp8_kernel<T, true, false>})
                                      : (gelu ? Kernel{gated_mul_fp8_kernel<T, false, true>}
                                              : Kernel{gated_mul_fp8_kernel<T, false, false>});
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(launch.config(), kernel, static_cast<const T*>(gate_up),
                                       gate_up_fp8, inter, static_cast<T*>(out), out_fp8));
  });
}

}  // namespace

void embed(DType dtype, const int32_t* tokens, int32_t num_tokens, const void* table,
           int32_t hidden, float* residual, cudaStream_t stream, RowSumsq* sumsq, float scale) {
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    embed_kernel<T><<<num_tokens, kThreads, 0, stream>>>(tokens, static_cast<const T*>(table),
                                                         hidden, residual, sumsq, scale);
  });
  L2KV_CUDA_CHECK_LAUNCH();
}

void add_rmsnorm(DType dtype, float* residual, const void* add, const void* weight, float eps,
                 int32_t num_tokens, int32_t hidden, void* out, cudaStream_t stream, bool pdl,
                 const ExpertSum& experts, const void* add_weight, const Fp8Product& add_fp8,
                 const Fp8Rows& out_fp8) {
  if (num_tokens <= 0) return;
  // The vectorized kernel's rows are the fp8 forms' rows: 8-element vectors, up to
  // kFp8OpsMaxWidth wide.
  const bool vectorized = fp8_ops_take(hidden);
  if ((add_fp8 || out_fp8) && !vectorized)
    throw Error(
        "add_rmsnorm: fp8 addends and outputs need a hidden size that is a multiple of 8 "
        "and at most " +
        std::to_string(kFp8OpsMaxWidth) + ", got " + std::to_string(hidden));
  if (add_fp8 && (add || add_weight))
    throw Error("add_rmsnorm: an fp8 addend goes alone, without a 16-bit one or its norm");
  if (out_fp8 && out_fp8.scales == nullptr)
    throw Error("add_rmsnorm: fp8 output codes need a scales buffer");
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (vectorized) {
      const RowClusterLaunch launch(num_tokens, hidden, stream, pdl);
      L2KV_CUDA_CHECK(cudaLaunchKernelEx(
          launch.config(), add_rmsnorm_kernel<T>, static_cast<float*>(residual),
          static_cast<const T*>(add), static_cast<const T*>(weight), eps, hidden,
          static_cast<T*>(out), experts, static_cast<const T*>(add_weight), add_fp8, out_fp8));
      return;
    }
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = launch_config(dim3(static_cast<unsigned>(num_tokens)),
                                                    dim3(kThreads), 0, stream, pdl, attribute);
    L2KV_CUDA_CHECK(
        cudaLaunchKernelEx(&config, add_rmsnorm_strided_kernel<T>, static_cast<float*>(residual),
                           static_cast<const T*>(add), static_cast<const T*>(weight), eps, hidden,
                           static_cast<T*>(out), experts, static_cast<const T*>(add_weight)));
  });
}

void rope_and_cache(const void* qkv, const void* bias, const int32_t* positions,
                    const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                    int32_t q_heads, const PagedKvCache& kv, void* q_out, cudaStream_t stream,
                    bool pdl, const QkNorm& qk_norm, bool pair_rows, const Fp8Product& qkv_fp8) {
  if (num_tokens <= 0) return;
  if (kv.head_dim / 2 > kMaxThreads)
    throw Error("rope_and_cache: head_dim " + std::to_string(kv.head_dim) + " is over " +
                std::to_string(2 * kMaxThreads));
  if (pair_rows && kv.head_dim % kPairedRowsTile != 0)
    throw Error("rope_and_cache: paired rows need a head_dim that is a multiple of " +
                std::to_string(kPairedRowsTile) + ", got " + std::to_string(kv.head_dim));
  if (qk_norm.q_weight == nullptr && qk_norm.k_weight == nullptr && !qkv_fp8 &&
      rope_cache_vectors_supports(kv, qkv, bias, q_out)) {
    rope_cache_vectors(qkv, bias, positions, slots, inv_freq, num_tokens, q_heads, kv, q_out,
                       stream, pdl, pair_rows);
    return;
  }
  with_16bit_type(kv.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto kernel = kv.fp8() ? rope_and_cache_kernel<T, true> : rope_and_cache_kernel<T, false>;
    cudaLaunchAttribute attribute;
    const auto heads = static_cast<unsigned>(q_heads + kv.num_kv_heads);
    const cudaLaunchConfig_t config =
        launch_config(dim3(static_cast<unsigned>(ceil_div(num_tokens, kRopeTokensPerBlock)), heads),
                      dim3(static_cast<unsigned>(kv.head_dim / 2)), 0, stream, pdl, attribute);
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(
        &config, kernel, static_cast<const T*>(qkv), static_cast<const T*>(bias), positions, slots,
        inv_freq, num_tokens, q_heads, kv, static_cast<T*>(q_out),
        static_cast<const T*>(qk_norm.q_weight), static_cast<const T*>(qk_norm.k_weight),
        qk_norm.eps, pair_rows, qkv_fp8));
  });
}

void calculate_kv_scales(const void* qkv, const void* bias, const int32_t* positions,
                         const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                         int32_t q_heads, const PagedKvCache& kv, float* scales,
                         cudaStream_t stream, const QkNorm& qk_norm, bool pair_rows) {
  if (num_tokens <= 0 || scales == nullptr)
    throw Error("calculate_kv_scales: needs at least one token and a scales buffer");
  if (pair_rows && kv.head_dim % kPairedRowsTile != 0)
    throw Error("calculate_kv_scales: paired rows need a head_dim that is a multiple of " +
                std::to_string(kPairedRowsTile) + ", got " + std::to_string(kv.head_dim));
  L2KV_CUDA_CHECK(cudaMemsetAsync(scales, 0, 2 * sizeof(float), stream));
  with_16bit_type(kv.dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    kv_amax_kernel<T><<<num_tokens, kThreads, 0, stream>>>(
        static_cast<const T*>(qkv), static_cast<const T*>(bias), positions, slots, inv_freq,
        q_heads, kv, scales, static_cast<const T*>(qk_norm.k_weight), qk_norm.eps, pair_rows);
  });
  L2KV_CUDA_CHECK_LAUNCH();
}

void gated_mul(DType dtype, const void* gate_up, int32_t num_tokens, int32_t inter, void* out,
               cudaStream_t stream, bool pdl, bool interleaved, GateActivation activation,
               const Fp8Product& gate_up_fp8, const Fp8Rows& out_fp8) {
  if (interleaved && inter % kVec != 0)
    throw Error(
        "gated_mul: an interleaved gate_up needs an intermediate size that is a multiple of 8");
  if ((gate_up_fp8 || out_fp8) && !fp8_ops_take(inter))
    throw Error(
        "gated_mul: fp8 inputs and outputs need an intermediate size that is a multiple "
        "of 8 and at most " +
        std::to_string(kFp8OpsMaxWidth) + ", got " + std::to_string(inter));
  if (out_fp8 && out_fp8.scales == nullptr)
    throw Error("gated_mul: fp8 output codes need a scales buffer");
  if (num_tokens <= 0) return;
  // With a 16-bit gate_up (prompts: cuBLASLt scaled the product), the codes come from the plain
  // op's output as quantize_rows_fp8 makes them: at 2,064 rows that chain is faster than the fused
  // kernel, whose rows then take 1,792 vectors in registers each (bench/NOTES.md, "Row kernels as
  // clusters of blocks").
  if (gate_up_fp8 || (out_fp8 && num_tokens < kSeparateCodesMinRows)) {
    gated_mul_fp8(dtype, gate_up, num_tokens, inter, out, stream, pdl, interleaved, activation,
                  gate_up_fp8, out_fp8);
    return;
  }
  if (out_fp8) {
    gated_mul(dtype, gate_up, num_tokens, inter, out, stream, pdl, interleaved, activation);
    quantize_rows_fp8(dtype, out, num_tokens, inter, out_fp8.codes, out_fp8.scales, stream);
    return;
  }
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const auto* in = static_cast<const T*>(gate_up);
    T* o = static_cast<T*>(out);
    const bool vectorized = inter % kVec == 0;
    const auto vec_blocks = static_cast<unsigned>((inter / kVec + kThreads - 1) / kThreads);
    using Kernel = void (*)(const T*, int32_t, T*);
    Kernel kernel = nullptr;
    if (activation == GateActivation::kGeluTanh)
      kernel = !vectorized   ? Kernel{gated_mul_strided_kernel<T, true>}
               : interleaved ? Kernel{gated_mul_kernel<T, true, true>}
                             : Kernel{gated_mul_kernel<T, false, true>};
    else
      kernel = !vectorized   ? Kernel{gated_mul_strided_kernel<T, false>}
               : interleaved ? Kernel{gated_mul_kernel<T, true, false>}
                             : Kernel{gated_mul_kernel<T, false, false>};
    // gridDim.y holds at most 65,535 tokens: a larger step (a long prompt in one chunk) launches
    // in slices of that many.
    for (int32_t first = 0; first < num_tokens; first += kMaxGridDimY) {
      const auto tokens = static_cast<unsigned>(std::min(kMaxGridDimY, num_tokens - first));
      cudaLaunchAttribute attribute;
      const cudaLaunchConfig_t config =
          launch_config(vectorized ? dim3(vec_blocks, tokens) : dim3(tokens), dim3(kThreads), 0,
                        stream, pdl, attribute);
      L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, in + int64_t{first} * 2 * inter, inter,
                                         o + int64_t{first} * inter));
    }
  });
}

void weighted_silu_mul(DType dtype, const float* gate_up, const RowRmsScale& rms,
                       int32_t num_tokens, int32_t inter, void* out, cudaStream_t stream, bool pdl,
                       bool interleaved) {
  if (inter <= 0 || inter % kVec != 0 || num_tokens > kThreads || rms.sumsq == nullptr ||
      rms.width <= 0)
    throw Error(
        "weighted_silu_mul: needs an intermediate size that is a positive multiple of 8 "
        "(got " +
        std::to_string(inter) + "), at most " + std::to_string(kThreads) + " rows (got " +
        std::to_string(num_tokens) + ") and each row's sum of squares");
  if (num_tokens <= 0) return;
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using Kernel = void (*)(const float*, RowRmsScale, int32_t, T*);
    const Kernel kernel = interleaved ? Kernel{weighted_silu_mul_kernel<T, true>}
                                      : Kernel{weighted_silu_mul_kernel<T, false>};
    const auto vec_blocks = static_cast<unsigned>(ceil_div(inter / kVec, kThreads));
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config =
        launch_config(dim3(vec_blocks, static_cast<unsigned>(num_tokens)), dim3(kThreads), 0,
                      stream, pdl, attribute);
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, gate_up, rms, inter, static_cast<T*>(out)));
  });
}

void soft_cap(float* values, int64_t count, float cap, cudaStream_t stream) {
  if (count <= 0) return;
  if (!(cap > 0.f)) throw Error("soft_cap: the cap must be positive");
  const auto blocks =
      static_cast<unsigned>(std::min<int64_t>((count + kThreads - 1) / kThreads, 4096));
  soft_cap_kernel<<<blocks, kThreads, 0, stream>>>(values, count, cap);
  L2KV_CUDA_CHECK_LAUNCH();
}

void gather_rows(const void* in, const int32_t* rows, int32_t num_rows, int32_t width, void* out,
                 cudaStream_t stream) {
  gather_rows_kernel<<<num_rows, kThreads, 0, stream>>>(static_cast<const uint16_t*>(in), rows,
                                                        width, static_cast<uint16_t*>(out));
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv::ops
