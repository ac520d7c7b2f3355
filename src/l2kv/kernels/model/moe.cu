#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>
#include <type_traits>

#include "l2kv/core/ceil_div.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/dtype_dispatch.cuh"
#include "l2kv/kernels/model/moe.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv::ops {
namespace {

constexpr int kWarp = 32;

// One warp per token: the max and the sum of exponentials over the experts, then top_k rounds
// of a warp argmax (lower index on ties), each winner struck out.
__global__ void moe_route_kernel(const float* logits, int32_t num_tokens, int32_t num_experts,
                                 int32_t top_k, bool normalize, int32_t* experts, float* weights) {
  const int token = static_cast<int>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  if (token >= num_tokens) return;
  const float* row = logits + static_cast<int64_t>(token) * num_experts;
  float top = -INFINITY;
  for (int e = lane; e < num_experts; e += kWarp) top = fmaxf(top, row[e]);
  for (int m = 16; m >= 1; m /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, m));
  float sum = 0.f;
  for (int e = lane; e < num_experts; e += kWarp) sum += expf(row[e] - top);
  for (int m = 16; m >= 1; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  // Chosen experts as a bit per (lane, e / 32) in registers: at most 32 per lane.
  uint32_t taken = 0;
  float chosen_p[kMoeMaxTopK];
  int chosen_e[kMoeMaxTopK];
  float chosen_sum = 0.f;
  for (int k = 0; k < top_k; ++k) {
    float best = -1.f;
    int best_e = num_experts;
    for (int e = lane, i = 0; e < num_experts; e += kWarp, ++i) {
      if (taken & (1u << i)) continue;
      float p = expf(row[e] - top) / sum;
      // A non-finite router row gives NaNs: below every probability but above "none", so every
      // lane's and the warp's choice stays an expert id (the NaN row shows in the weights).
      if (!(p >= 0.f)) p = -0.5f;
      if (p > best) best = p, best_e = e;  // ascending e: the first of equals stays
    }
    for (int m = 16; m >= 1; m /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, m);
      const int other_e = __shfl_xor_sync(0xffffffffu, best_e, m);
      if (other > best || (other == best && other_e < best_e)) best = other, best_e = other_e;
    }
    if (best_e % kWarp == lane) taken |= 1u << (best_e / kWarp);
    chosen_p[k] = best;
    chosen_e[k] = best_e;
    chosen_sum += best;
  }
  if (lane != 0) return;
  for (int k = 0; k < top_k; ++k) {
    experts[token * top_k + k] = chosen_e[k];
    weights[token * top_k + k] = normalize ? chosen_p[k] / chosen_sum : chosen_p[k];
  }
}

constexpr int kGroupThreads = 1024;

// One block: counts per expert in shared memory, an exclusive prefix sum, then each slot's
// place in its expert's list (the order inside a list does not matter: slots are computed
// independently).
__global__ void __launch_bounds__(kGroupThreads)
    moe_group_kernel(const int32_t* experts, int32_t num_slots, int32_t num_experts, int32_t* first,
                     int32_t* by_expert, int32_t* active) {
  __shared__ int32_t count[kMoeMaxExperts + 1];
  const int tid = static_cast<int>(threadIdx.x);
  for (int e = tid; e <= num_experts; e += kGroupThreads) count[e] = 0;
  __syncthreads();
  for (int s = tid; s < num_slots; s += kGroupThreads) atomicAdd(&count[experts[s] + 1], 1);
  __syncthreads();
  if (tid == 0) {
    int chosen = 0;
    for (int e = 1; e <= num_experts; ++e) {
      if (count[e] > 0) active[1 + chosen++] = e - 1;
      count[e] += count[e - 1];
    }
    active[0] = chosen;
  }
  __syncthreads();
  for (int e = tid; e <= num_experts; e += kGroupThreads) first[e] = count[e];
  __syncthreads();
  for (int s = tid; s < num_slots; s += kGroupThreads)
    by_expert[atomicAdd(&count[experts[s]], 1)] = s;
}

constexpr int kGemvThreads = 256;
constexpr int kFeaturesPerWarp = 4;
constexpr int kFeaturesPerBlock = kGemvThreads / kWarp * kFeaturesPerWarp;
constexpr int kSlotsPerPass = 8;

// Block (feature block, i): the i-th chosen expert (moe_group's active list; blocks past the
// count return at once), each warp kFeaturesPerWarp features of the expert for up to
// kSlotsPerPass of its slots at once (16-byte weight loads, each applied to every slot's x),
// fp32 sums reduced across the warp.
template <typename T>
__global__ void __launch_bounds__(kGemvThreads)
    expert_gemv_kernel(const T* x, int32_t slots_per_row, const int32_t* first,
                       const int32_t* by_expert, const int32_t* active, const T* w, int64_t out,
                       int64_t in, T* y) {
  using Traits = tc::ElementTraits<T>;
  if (static_cast<int>(blockIdx.y) >= active[0]) return;
  const int expert = active[1 + blockIdx.y];
  const int begin = first[expert], end = first[expert + 1];
  if (begin == end) return;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t feature0 = int64_t{blockIdx.x} * kFeaturesPerBlock + warp * kFeaturesPerWarp;
  if (feature0 >= out) return;
  const int features =
      out - feature0 < kFeaturesPerWarp ? static_cast<int>(out - feature0) : kFeaturesPerWarp;
  const T* weights = w + (static_cast<int64_t>(expert) * out + feature0) * in;
  const int vectors = static_cast<int>(in / 8);
  for (int pass = begin; pass < end; pass += kSlotsPerPass) {
    const int slots = min(kSlotsPerPass, end - pass);
    const uint4* x_rows[kSlotsPerPass];
#pragma unroll
    for (int j = 0; j < kSlotsPerPass; ++j) {
      const int slot = by_expert[pass + (j < slots ? j : 0)];
      x_rows[j] =
          reinterpret_cast<const uint4*>(x + static_cast<int64_t>(slot / slots_per_row) * in);
    }
    float acc[kSlotsPerPass][kFeaturesPerWarp] = {};
#pragma unroll 2
    for (int v = lane; v < vectors; v += kWarp) {
      float wf[kFeaturesPerWarp][8];
#pragma unroll
      for (int f = 0; f < kFeaturesPerWarp; ++f) {
        const uint4 wv = f < features ? __ldg(reinterpret_cast<const uint4*>(weights + f * in) + v)
                                      : make_uint4(0, 0, 0, 0);
        const T* we = reinterpret_cast<const T*>(&wv);
#pragma unroll
        for (int i = 0; i < 8; ++i) wf[f][i] = Traits::to_float(we[i]);
      }
#pragma unroll
      for (int j = 0; j < kSlotsPerPass; ++j) {
        if (j >= slots) break;
        const uint4 xv = __ldg(x_rows[j] + v);
        const T* xe = reinterpret_cast<const T*>(&xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          const float xi = Traits::to_float(xe[i]);
#pragma unroll
          for (int f = 0; f < kFeaturesPerWarp; ++f) acc[j][f] += wf[f][i] * xi;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kSlotsPerPass; ++j) {
      if (j >= slots) break;
      const int slot = by_expert[pass + j];
#pragma unroll
      for (int f = 0; f < kFeaturesPerWarp; ++f) {
        float sum = acc[j][f];
        for (int m = 16; m >= 1; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
        if (lane == 0 && f < features)
          y[static_cast<int64_t>(slot) * out + feature0 + f] = Traits::from_float(sum);
      }
    }
  }
}

}  // namespace

void moe_route(const float* router_logits, int32_t num_tokens, int32_t num_experts, int32_t top_k,
               bool normalize, int32_t* experts, float* weights, cudaStream_t stream) {
  if (num_tokens <= 0) return;
  if (num_experts < 1 || num_experts > kMoeMaxExperts || top_k < 1 || top_k > num_experts ||
      top_k > kMoeMaxTopK)
    throw Error("moe_route: " + std::to_string(num_experts) + " experts, top " +
                std::to_string(top_k) + " (needs 1 <= top_k <= min(experts, " +
                std::to_string(kMoeMaxTopK) + "), experts <= " + std::to_string(kMoeMaxExperts) +
                ")");
  constexpr int kWarpsPerBlock = 4;
  moe_route_kernel<<<ceil_div(num_tokens, kWarpsPerBlock), kWarpsPerBlock * kWarp, 0, stream>>>(
      router_logits, num_tokens, num_experts, top_k, normalize, experts, weights);
  L2KV_CUDA_CHECK_LAUNCH();
}

void moe_group(const int32_t* experts, int32_t num_slots, int32_t num_experts, int32_t* first,
               int32_t* by_expert, int32_t* active, cudaStream_t stream) {
  if (num_experts < 1 || num_experts > kMoeMaxExperts || num_slots < 0)
    throw Error("moe_group: " + std::to_string(num_experts) + " experts (at most " +
                std::to_string(kMoeMaxExperts) + "), " + std::to_string(num_slots) + " slots");
  moe_group_kernel<<<1, kGroupThreads, 0, stream>>>(experts, num_slots, num_experts, first,
                                                    by_expert, active);
  L2KV_CUDA_CHECK_LAUNCH();
}

void expert_gemv(DType dtype, const void* x, int32_t slots_per_row, const int32_t* first,
                 const int32_t* by_expert, const int32_t* active, int32_t max_active, const void* w,
                 int64_t out, int64_t in, void* y, cudaStream_t stream) {
  if (in % 8 != 0 || in < 8 || out < 1 || slots_per_row < 1 || max_active < 1)
    throw Error("expert_gemv: in " + std::to_string(in) + " (a positive multiple of 8), out " +
                std::to_string(out) + ", " + std::to_string(max_active) + " experts at most");
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const dim3 grid(static_cast<unsigned>(ceil_div(out, kFeaturesPerBlock)),
                    static_cast<unsigned>(max_active));
    expert_gemv_kernel<T><<<grid, kGemvThreads, 0, stream>>>(
        static_cast<const T*>(x), slots_per_row, first, by_expert, active, static_cast<const T*>(w),
        out, in, static_cast<T*>(y));
  });
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv::ops
