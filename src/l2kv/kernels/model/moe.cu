#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>
#include <type_traits>

#include "l2kv/core/ceil_div.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/dtype_dispatch.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/gemv_weight_loads.cuh"
#include "l2kv/kernels/model/moe.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv::ops {
namespace {

constexpr int kWarp = 32;

// One warp per token: the max and the sum of exponentials over the experts, each expert's
// probability computed once into registers, then top_k rounds of a warp argmax (lower index on
// ties), each winner struck out. moe_route and moe_group start their successor early and,
// launched early themselves (pdl), wait before they read anything. kPerLane: experts per lane,
// at least ceil(num_experts / 32).
// The argmax's sentinels, all below every probability: a NaN probability (a non-finite router
// row) above "nothing chosen yet", and that above an expert struck out or past the end, so every
// round still ends on an expert id.
constexpr float kNanProbability = -0.5f;
constexpr float kNothingChosen = -1.f;
constexpr float kNotChoosable = -2.f;

template <int kPerLane>
__global__ void moe_route_kernel(const float* logits, int32_t num_tokens, int32_t num_experts,
                                 int32_t top_k, bool normalize, int32_t* experts, float* weights) {
  ptx::launch_dependents();
  ptx::grid_dependency_wait();
  const int token = static_cast<int>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  if (token >= num_tokens) return;
  const float* row = logits + static_cast<int64_t>(token) * num_experts;
  float logit[kPerLane];
  float top = -INFINITY;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int e = lane + i * kWarp;
    logit[i] = e < num_experts ? row[e] : -INFINITY;
    top = fmaxf(top, logit[i]);
  }
  for (int m = 16; m >= 1; m /= 2) top = fmaxf(top, __shfl_xor_sync(0xffffffffu, top, m));
  float sum = 0.f;
#pragma unroll
  for (int i = 0; i < kPerLane; ++i)
    if (lane + i * kWarp < num_experts) sum += expf(logit[i] - top);
  for (int m = 16; m >= 1; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  // Each expert's probability. A non-finite router row (only non-finite hidden states, whose
  // expert outputs are NaN anyway, give one) still chooses k distinct experts, with weights
  // kNanProbability, or 1 / k renormalized.
  float prob[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    prob[i] = lane + i * kWarp < num_experts ? expf(logit[i] - top) / sum : kNotChoosable;
    if (lane + i * kWarp < num_experts && !(prob[i] >= 0.f)) prob[i] = kNanProbability;
  }
  float chosen_p[kMoeMaxTopK];
  int chosen_e[kMoeMaxTopK];
  float chosen_sum = 0.f;
  for (int k = 0; k < top_k; ++k) {
    float best = kNothingChosen;
    int best_e = num_experts;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)  // ascending e: the first of equals stays
      if (prob[i] > best) best = prob[i], best_e = lane + i * kWarp;
    for (int m = 16; m >= 1; m /= 2) {
      const float other = __shfl_xor_sync(0xffffffffu, best, m);
      const int other_e = __shfl_xor_sync(0xffffffffu, best_e, m);
      if (other > best || (other == best && other_e < best_e)) best = other, best_e = other_e;
    }
#pragma unroll
    for (int i = 0; i < kPerLane; ++i)  // struck out
      if (best_e == lane + i * kWarp) prob[i] = kNotChoosable;
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

constexpr int kGroupThreads = kMoeMaxExperts;  // one thread per expert
static_assert(kGroupThreads == kWarp * kWarp, "warp 0 scans one total per warp");

// One block: counts per expert in shared memory; a scan over the experts (thread e is expert e:
// warp prefix sums, then the warps' totals) gives each expert's first slot and its place among
// the chosen experts; then each slot's place in its expert's list (the order inside a list does
// not matter: slots are computed independently).
__global__ void __launch_bounds__(kGroupThreads)
    moe_group_kernel(const int32_t* experts, int32_t num_slots, int32_t num_experts, int32_t* first,
                     int32_t* by_expert, int32_t* active) {
  ptx::launch_dependents();
  ptx::grid_dependency_wait();
  __shared__ int32_t count[kMoeMaxExperts];
  __shared__ int32_t warp_slots[kGroupThreads / kWarp], warp_chosen[kGroupThreads / kWarp];
  const int tid = static_cast<int>(threadIdx.x), lane = tid % kWarp, warp = tid / kWarp;
  count[tid] = 0;
  __syncthreads();
  for (int s = tid; s < num_slots; s += kGroupThreads) atomicAdd(&count[experts[s]], 1);
  __syncthreads();
  const int mine = tid < num_experts ? count[tid] : 0;
  int slots_to = mine, chosen_to = mine > 0 ? 1 : 0;  // inclusive prefixes within the warp
  for (int d = 1; d < kWarp; d *= 2) {
    const int slots_below = __shfl_up_sync(0xffffffffu, slots_to, d);
    const int chosen_below = __shfl_up_sync(0xffffffffu, chosen_to, d);
    if (lane >= d) slots_to += slots_below, chosen_to += chosen_below;
  }
  if (lane == kWarp - 1) warp_slots[warp] = slots_to, warp_chosen[warp] = chosen_to;
  __syncthreads();
  if (warp == 0) {  // exclusive prefixes of the warps' totals
    int slots_through = warp_slots[lane], chosen_through = warp_chosen[lane];
    for (int d = 1; d < kWarp; d *= 2) {
      const int slots_below = __shfl_up_sync(0xffffffffu, slots_through, d);
      const int chosen_below = __shfl_up_sync(0xffffffffu, chosen_through, d);
      if (lane >= d) slots_through += slots_below, chosen_through += chosen_below;
    }
    warp_slots[lane] = slots_through - warp_slots[lane];
    warp_chosen[lane] = chosen_through - warp_chosen[lane];
  }
  __syncthreads();
  const int before = warp_slots[warp] + slots_to - mine;  // slots of the experts below this one
  const int place = warp_chosen[warp] + chosen_to - (mine > 0 ? 1 : 0);
  if (tid < num_experts) {
    first[tid] = before;
    count[tid] = before;  // the cursor of this expert's list
    if (mine > 0) active[1 + place] = tid;
  }
  if (tid == num_experts - 1) {
    first[num_experts] = before + mine;
    active[0] = place + (mine > 0 ? 1 : 0);
  }
  __syncthreads();
  for (int s = tid; s < num_slots; s += kGroupThreads)
    by_expert[atomicAdd(&count[experts[s]], 1)] = s;
}

// The expert GEMV on tensor cores (mma.m16n8k16 with the dense decode GEMV's fragment trick,
// gemv.cu and gemv_weight_loads.cuh): a block takes two 16-feature tiles of one chosen expert,
// each tile's k split between four warps (iteration i of a tile goes to warp i % 4); per pass
// up to 8 of the expert's slots are the mma's N, lane (g, t) reading slot g's x. The warps'
// fragments are summed through shared memory. The scalar form this replaced did 8 FMAs per
// weight at 8 slots and was bound by them, not by the weight stream (bench/NOTES.md).
constexpr int kMmaWarps = 8;
constexpr int kMmaThreads = kMmaWarps * kWarp;
constexpr int kTileFeatures = 16;  // the mma's M
constexpr int kTilesPerBlock = 2;
constexpr int kWarpsPerTile = kMmaWarps / kTilesPerBlock;
constexpr int kSlotsPerPass = 8;  // the mma's N
constexpr int kUnroll = 4;        // 16-byte vectors of each of a lane's two rows per iteration
constexpr int kVecElems = 8;
constexpr int kIterVecs = gemv_loads::kLanesPerRow * kUnroll;  // of one row, per iteration

// kSiluMul: W is [gate; up] ([2 inter][in] per expert) and the block's tile 0 holds gate rows
// f .. f + 15 and tile 1 the up rows of the same features, so the epilogue writes
// silu(gate) * up ([slots][inter]) from the 16-bit-rounded products, as gated_mul computes it
// from the stored gate_up. Otherwise the two tiles are consecutive features of y [slots][out].
// Under programmatic dependent launch (`pdl`) the kernel ahead may still run: the slot lists and
// W are not its output, so the block reads them and sends its tiles' weight rows to L2 before it
// waits to read x.
template <typename T, bool kSiluMul>
__global__ void __launch_bounds__(kMmaThreads, 3)
    expert_gemv_kernel(const T* x, int32_t slots_per_row, const int32_t* first,
                       const int32_t* by_expert, const int32_t* active, const T* w, int64_t out,
                       int64_t in, T* y, bool pdl) {
  using Traits = tc::ElementTraits<T>;
  __shared__ float4 partial[kMmaWarps][kWarp];
  ptx::launch_dependents();
  if (static_cast<int>(blockIdx.y) >= active[0]) return;
  const int expert = active[1 + blockIdx.y];
  const int begin = first[expert], end = first[expert + 1];
  if (begin == end) return;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int tile = warp / kWarpsPerTile, kw = warp % kWarpsPerTile;
  const int g = lane / gemv_loads::kLanesPerRow, t = lane % gemv_loads::kLanesPerRow;
  // Feature f_lo = g (and f_lo + 8) of the tile; rows past the end read a row inside (their
  // sums are dropped).
  const int64_t features = kSiluMul ? out / 2 : out;
  const int64_t f_lo = kSiluMul ? int64_t{blockIdx.x} * kTileFeatures + g
                                : (int64_t{blockIdx.x} * kTilesPerBlock + tile) * kTileFeatures + g;
  const int64_t row_base = kSiluMul ? tile * features : 0;
  const T* we = w + static_cast<int64_t>(expert) * out * in;
  const auto row = [&](int64_t f) { return row_base + (f < features ? f : features - 1); };
  const uint4* w_lo = reinterpret_cast<const uint4*>(we + row(f_lo) * in) + t;
  const uint4* w_hi = reinterpret_cast<const uint4*>(we + row(f_lo + 8) * in) + t;
  if (pdl) {
    // The first warp of each tile: lane r sends the tile's row r (if it exists) to L2.
    const int64_t f = f_lo - g + lane;
    if (kw == 0 && lane < kTileFeatures && f < features)
      ptx::bulk_prefetch_l2(we + (row_base + f) * in, static_cast<uint32_t>(in * sizeof(T)));
    ptx::grid_dependency_wait();
  }
  const int64_t vecs = in / kVecElems;
  const int64_t lane_vecs = vecs - t;
  const int64_t iters = (vecs + kIterVecs - 1) / kIterVecs;
  for (int pass = begin; pass < end; pass += kSlotsPerPass) {
    const int slots = min(kSlotsPerPass, end - pass);
    const uint4* xr =
        g < slots ? reinterpret_cast<const uint4*>(
                        x + static_cast<int64_t>(by_expert[pass + g] / slots_per_row) * in) +
                        t
                  : nullptr;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t i = kw; i < iters; i += kWarpsPerTile) {
      const int64_t v0 = i * kIterVecs;
      gemv_loads::WeightVecs<kUnroll> wv;
      gemv_loads::load_weights<kUnroll, true>(wv, w_lo, w_hi, v0, lane_vecs);
      uint4 xv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = v0 + u * gemv_loads::kLanesPerRow;
        xv[u] = xr != nullptr && v < lane_vecs ? __ldg(xr + v) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const uint32_t a0[4] = {wv.lo[u].x, wv.hi[u].x, wv.lo[u].y, wv.hi[u].y};
        const uint32_t a1[4] = {wv.lo[u].z, wv.hi[u].z, wv.lo[u].w, wv.hi[u].w};
        const uint32_t b0[2] = {xv[u].x, xv[u].y};
        const uint32_t b1[2] = {xv[u].z, xv[u].w};
        tc::mma_m16n8k16<T>(acc, a0, b0);
        tc::mma_m16n8k16<T>(acc, a1, b1);
      }
    }
    partial[warp][lane] = make_float4(acc[0], acc[1], acc[2], acc[3]);
    __syncthreads();
    // C fragment: (x, y) = feature f_lo of slots 2t, 2t + 1; (z, w) = feature f_lo + 8.
    const auto tile_sum = [&](int first_warp) {
      float4 s = partial[first_warp][lane];
#pragma unroll
      for (int j = 1; j < kWarpsPerTile; ++j) {
        const float4 o = partial[first_warp + j][lane];
        s.x += o.x, s.y += o.y, s.z += o.z, s.w += o.w;
      }
      return s;
    };
    if (kSiluMul ? warp == 0 : kw == 0) {
      const float4 s = tile_sum(warp);
      float4 up{};
      if constexpr (kSiluMul) up = tile_sum(kWarpsPerTile);
      const float lo[2] = {s.x, s.y}, hi[2] = {s.z, s.w};
      const float up_lo[2] = {up.x, up.y}, up_hi[2] = {up.z, up.w};
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        if (2 * t + c >= slots) continue;
        T* y_row = y + static_cast<int64_t>(by_expert[pass + 2 * t + c]) * features;
        const auto store = [&](int64_t f, float value, float up_value) {
          if (f >= features) return;
          if constexpr (kSiluMul) {
            const float gate = Traits::to_float(Traits::from_float(value));
            const float u = Traits::to_float(Traits::from_float(up_value));
            y_row[f] = Traits::from_float(gate / (1.f + __expf(-gate)) * u);
          } else {
            y_row[f] = Traits::from_float(value);
          }
        };
        store(f_lo, lo[c], up_lo[c]);
        store(f_lo + 8, hi[c], up_hi[c]);
      }
    }
    __syncthreads();  // `partial` is the next pass's
  }
}

template <bool kSiluMul>
void launch_expert_gemv(DType dtype, const void* x, int32_t slots_per_row, const int32_t* first,
                        const int32_t* by_expert, const int32_t* active, int32_t max_active,
                        const void* w, int64_t out, int64_t in, void* y, cudaStream_t stream,
                        bool pdl) {
  const char* name = kSiluMul ? "expert_gemv_silu_mul" : "expert_gemv";
  if (in % 8 != 0 || in < 8 || out < 1 || (kSiluMul && out % 2 != 0) || slots_per_row < 1 ||
      max_active < 1)
    throw Error(std::string(name) + ": in " + std::to_string(in) +
                " (a positive multiple of 8), out " + std::to_string(out) +
                (kSiluMul ? " (even: gate and up)" : "") + ", " + std::to_string(max_active) +
                " experts at most");
  const int64_t blocks = kSiluMul ? ceil_div(out / 2, int64_t{kTileFeatures})
                                  : ceil_div(out, int64_t{kTileFeatures * kTilesPerBlock});
  with_16bit_type(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(max_active));
    cudaLaunchAttribute attribute;
    const cudaLaunchConfig_t config = launch_config(grid, kMmaThreads, 0, stream, pdl, attribute);
    L2KV_CUDA_CHECK(cudaLaunchKernelEx(
        &config, expert_gemv_kernel<T, kSiluMul>, static_cast<const T*>(x), slots_per_row, first,
        by_expert, active, static_cast<const T*>(w), out, in, static_cast<T*>(y), pdl));
  });
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace

void moe_route(const float* router_logits, int32_t num_tokens, int32_t num_experts, int32_t top_k,
               bool normalize, int32_t* experts, float* weights, cudaStream_t stream, bool pdl) {
  if (num_tokens <= 0) return;
  if (num_experts < 1 || num_experts > kMoeMaxExperts || top_k < 1 || top_k > num_experts ||
      top_k > kMoeMaxTopK)
    throw Error("moe_route: " + std::to_string(num_experts) + " experts, top " +
                std::to_string(top_k) + " (needs 1 <= top_k <= min(experts, " +
                std::to_string(kMoeMaxTopK) + "), experts <= " + std::to_string(kMoeMaxExperts) +
                ")");
  constexpr int kWarpsPerBlock = 4;
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config =
      launch_config(static_cast<unsigned>(ceil_div(num_tokens, kWarpsPerBlock)),
                    kWarpsPerBlock * kWarp, 0, stream, pdl, attribute);
  // The probabilities sit in registers: as few per lane as the experts allow.
  const auto kernel = num_experts <= 4 * kWarp   ? moe_route_kernel<4>
                      : num_experts <= 8 * kWarp ? moe_route_kernel<8>
                                                 : moe_route_kernel<kMoeMaxExperts / kWarp>;
  L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, router_logits, num_tokens, num_experts, top_k,
                                     normalize, experts, weights));
}

void moe_group(const int32_t* experts, int32_t num_slots, int32_t num_experts, int32_t* first,
               int32_t* by_expert, int32_t* active, cudaStream_t stream, bool pdl) {
  if (num_experts < 1 || num_experts > kMoeMaxExperts || num_slots < 0)
    throw Error("moe_group: " + std::to_string(num_experts) + " experts (at most " +
                std::to_string(kMoeMaxExperts) + "), " + std::to_string(num_slots) + " slots");
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config = launch_config(1, kGroupThreads, 0, stream, pdl, attribute);
  L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, moe_group_kernel, experts, num_slots, num_experts,
                                     first, by_expert, active));
}

void expert_gemv(DType dtype, const void* x, int32_t slots_per_row, const int32_t* first,
                 const int32_t* by_expert, const int32_t* active, int32_t max_active, const void* w,
                 int64_t out, int64_t in, void* y, cudaStream_t stream, bool pdl) {
  launch_expert_gemv<false>(dtype, x, slots_per_row, first, by_expert, active, max_active, w, out,
                            in, y, stream, pdl);
}

void expert_gemv_silu_mul(DType dtype, const void* x, int32_t slots_per_row, const int32_t* first,
                          const int32_t* by_expert, const int32_t* active, int32_t max_active,
                          const void* w_gate_up, int64_t inter, int64_t in, void* act,
                          cudaStream_t stream, bool pdl) {
  launch_expert_gemv<true>(dtype, x, slots_per_row, first, by_expert, active, max_active, w_gate_up,
                           2 * inter, in, act, stream, pdl);
}

}  // namespace l2kv::ops
