#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/block_reduce.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/parallel/one_shot_collective.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv::ops {
namespace {

// A wait that outlives this is a peer that never came (a hung or dead rank): trap, so the
// runner sees a device fault instead of hanging.
constexpr uint64_t kWaitTimeoutNs = uint64_t{60} * 1000 * 1000 * 1000;

// Spins between two looks at the host-mapped abort flag and the clock (each a slow read).
constexpr int kSpinsPerCheck = 256;

__device__ __forceinline__ uint64_t load_acquire_system(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ void store_release_system(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ uint64_t global_timer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// Stages this block's part of the message (`stage(staging)` copies it into this rank's staging
// half of the call) and meets every peer's block of the same index; returns the call's number
// (whose parity picks the half), or 0 when the group was aborted. After it the block may read
// what the peers' blocks of its index staged in this call.
template <typename Stage>
__device__ uint64_t stage_and_meet(Stage stage, const CollectivePeers& p) {
  __shared__ uint64_t call_shared;
  __shared__ int32_t aborted;
  CollectiveSignals* mine = p.signals[p.rank];
  if (threadIdx.x == 0) {
    call_shared = mine->calls[blockIdx.x] + 1;
    mine->calls[blockIdx.x] = call_shared;
    aborted = 0;
  }
  __syncthreads();
  const uint64_t call = call_shared;  // from 1: 0 is left for "aborted"
  uint4* staging = reinterpret_cast<uint4*>(static_cast<char*>(p.staging[p.rank]) +
                                            static_cast<int64_t>(call & 1) * p.staging_half_bytes);
  stage(staging);
  __syncthreads();  // the block's vectors are staged before any peer is told
  if (threadIdx.x < p.size) {
    __threadfence_system();
    store_release_system(&p.signals[threadIdx.x]->arrived[blockIdx.x][p.rank], call);
    const uint64_t* flag = &mine->arrived[blockIdx.x][threadIdx.x];
    const uint64_t start = global_timer_ns();
    for (int spins = 1; load_acquire_system(flag) < call; ++spins) {
      if (spins % kSpinsPerCheck != 0) continue;
      if (p.abort != nullptr && *p.abort != 0) {
        aborted = 1;
        break;
      }
      if (global_timer_ns() - start > kWaitTimeoutNs) __trap();
    }
  }
  __syncthreads();
  return aborted ? 0 : call;
}

// The strided copy of the flat collectives: vector v is block (v / blockDim) % gridDim's.
struct StageVectors {
  const uint4* in;
  int64_t vectors;
  __device__ void operator()(uint4* staging) const {
    for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
         v += int64_t{gridDim.x} * blockDim.x)
      staging[v] = in[v];
  }
};

// Eight 16-bit elements of a 16-byte vector as floats (tensor_core.cuh's pair conversions).
template <typename T>
struct Vector8 {
  static __device__ void add(const uint4& v, float* acc) {
    const uint32_t words[4] = {v.x, v.y, v.z, v.w};
    for (int i = 0; i < 4; ++i) {
      const float2 f = tc::ElementTraits<T>::unpack(words[i]);
      acc[2 * i] += f.x, acc[2 * i + 1] += f.y;
    }
  }
  static __device__ uint4 pack(const float* acc) {
    using Traits = tc::ElementTraits<T>;
    return make_uint4(Traits::pack(acc[0], acc[1]), Traits::pack(acc[2], acc[3]),
                      Traits::pack(acc[4], acc[5]), Traits::pack(acc[6], acc[7]));
  }
};

// Rank `rank`'s staged vectors of call `call` (the half its parity picks).
__device__ __forceinline__ const uint4* staged(const CollectivePeers& p, int32_t rank,
                                               uint64_t call) {
  return reinterpret_cast<const uint4*>(static_cast<const char*>(p.staging[rank]) +
                                        static_cast<int64_t>(call & 1) * p.staging_half_bytes);
}

template <typename T>
__global__ void __launch_bounds__(kCollectiveThreads)
    all_reduce_16bit_kernel(const uint4* in, uint4* out, int64_t vectors, CollectivePeers p) {
  const uint64_t call = stage_and_meet(StageVectors{in, vectors}, p);
  if (call == 0) return;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    float acc[8] = {};
    for (int32_t r = 0; r < p.size; ++r)  // rank order: the same bits on every rank
      Vector8<T>::add(__ldcv(staged(p, r, call) + v), acc);
    out[v] = Vector8<T>::pack(acc);
  }
}

__global__ void __launch_bounds__(kCollectiveThreads)
    all_reduce_f32_kernel(const uint4* in, uint4* out, int64_t vectors, CollectivePeers p) {
  const uint64_t call = stage_and_meet(StageVectors{in, vectors}, p);
  if (call == 0) return;
  for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
       v += int64_t{gridDim.x} * blockDim.x) {
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int32_t r = 0; r < p.size; ++r) {
      const float4 x = __ldcv(reinterpret_cast<const float4*>(staged(p, r, call)) + v);
      acc.x += x.x, acc.y += x.y, acc.z += x.z, acc.w += x.w;
    }
    reinterpret_cast<float4*>(out)[v] = acc;
  }
}

__global__ void __launch_bounds__(kCollectiveThreads)
    gather_to_first_kernel(const uint4* in, uint4* out, int64_t vectors, CollectivePeers p) {
  const uint64_t call = stage_and_meet(StageVectors{in, vectors}, p);
  if (call == 0 || p.rank != 0) return;
  for (int32_t r = 0; r < p.size; ++r)
    for (int64_t v = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; v < vectors;
         v += int64_t{gridDim.x} * blockDim.x)
      out[r * vectors + v] = __ldcv(staged(p, r, call) + v);
}

// The rows of the fused form are the blocks': row r is block r % gridDim's, staged and read
// whole, so the block can normalize it after the sum.
struct StageRows {
  const uint4* in;
  int32_t rows, row_vectors;
  __device__ void operator()(uint4* staging) const {
    for (int32_t r = blockIdx.x; r < rows; r += gridDim.x)
      for (int32_t v = threadIdx.x; v < row_vectors; v += blockDim.x)
        staging[int64_t{r} * row_vectors + v] = in[int64_t{r} * row_vectors + v];
  }
};

// residual += the sum over ranks of `partial` (rounded to T, as the all-reduce would leave
// it), then out = RMSNorm(residual) * weight (add_rmsnorm's formula).
template <typename T>
__global__ void __launch_bounds__(kCollectiveThreads)
    all_reduce_add_rmsnorm_kernel(const uint4* partial, float* residual, const uint4* weight,
                                  float eps, int32_t rows, int32_t hidden, uint4* out,
                                  CollectivePeers p) {
  // The projection after the norm (launched with PDL) may start streaming its weights now: it
  // waits for this grid before it reads `out`.
  if (!p.shared_device) ptx::launch_dependents();
  const int32_t row_vectors = hidden / 8;
  const uint64_t call = stage_and_meet(StageRows{partial, rows, row_vectors}, p);
  if (call == 0) return;
  for (int32_t r = blockIdx.x; r < rows; r += gridDim.x) {
    float sum_sq = 0.f;
    for (int32_t v = threadIdx.x; v < row_vectors; v += blockDim.x) {
      const int64_t vector = int64_t{r} * row_vectors + v;
      float acc[8] = {};
      for (int32_t rank = 0; rank < p.size; ++rank)
        Vector8<T>::add(__ldcv(staged(p, rank, call) + vector), acc);
      float added[8] = {};
      Vector8<T>::add(Vector8<T>::pack(acc), added);
      float4* x = reinterpret_cast<float4*>(residual + vector * 8);
      float4 lo = x[0], hi = x[1];
      lo.x += added[0], lo.y += added[1], lo.z += added[2], lo.w += added[3];
      hi.x += added[4], hi.y += added[5], hi.z += added[6], hi.w += added[7];
      x[0] = lo, x[1] = hi;
      sum_sq += lo.x * lo.x + lo.y * lo.y + lo.z * lo.z + lo.w * lo.w + hi.x * hi.x + hi.y * hi.y +
                hi.z * hi.z + hi.w * hi.w;
    }
    const float scale = __frsqrt_rn(block_sum(sum_sq) / hidden + eps);
    for (int32_t v = threadIdx.x; v < row_vectors; v += blockDim.x) {
      const int64_t vector = int64_t{r} * row_vectors + v;
      const float4* x = reinterpret_cast<const float4*>(residual + vector * 8);
      const float4 lo = x[0], hi = x[1];
      const float xs[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
      float gamma[8] = {};
      Vector8<T>::add(weight[v], gamma);
      float y[8];
      for (int e = 0; e < 8; ++e) y[e] = gamma[e] * (xs[e] * scale);
      out[vector] = Vector8<T>::pack(y);
    }
  }
}

void check_call(const void* in, const void* out, int64_t bytes, const CollectivePeers& p,
                const char* what) {
  const std::string name = std::string("one-shot ") + what;
  if (p.size < 1 || p.size > kCollectiveMaxRanks || p.rank < 0 || p.rank >= p.size)
    throw Error(name + ": rank " + std::to_string(p.rank) + " of " + std::to_string(p.size) +
                " (1 to " + std::to_string(kCollectiveMaxRanks) + " ranks)");
  for (int32_t r = 0; r < p.size; ++r)
    if (p.staging[r] == nullptr || p.signals[r] == nullptr)
      throw Error(name + ": rank " + std::to_string(r) + " has no staging buffer or flags");
  if (bytes <= 0 || bytes % 16 != 0 || bytes > p.staging_half_bytes)
    throw Error(name + " of " + std::to_string(bytes) +
                " bytes: needs a positive multiple of 16 up to the staging buffer's " +
                std::to_string(p.staging_half_bytes));
  if (reinterpret_cast<uintptr_t>(in) % 16 != 0 || reinterpret_cast<uintptr_t>(out) % 16 != 0)
    throw Error(name + ": buffers must be 16-byte aligned");
}

}  // namespace

int32_t collective_type_bytes(CollectiveType type) {
  return type == CollectiveType::kFloat32 ? 4 : 2;
}

void one_shot_all_reduce(CollectiveType type, const void* in, void* out, int64_t count,
                         const CollectivePeers& peers, cudaStream_t stream) {
  const int64_t bytes = count * collective_type_bytes(type);
  check_call(in, out, bytes, peers, "all-reduce");
  if (out == nullptr) throw Error("one-shot all-reduce: no output buffer");
  const auto* x = static_cast<const uint4*>(in);
  auto* y = static_cast<uint4*>(out);
  const int64_t vectors = bytes / 16;
  if (type == CollectiveType::kBFloat16)
    all_reduce_16bit_kernel<__nv_bfloat16>
        <<<kCollectiveBlocks, kCollectiveThreads, 0, stream>>>(x, y, vectors, peers);
  else if (type == CollectiveType::kFloat16)
    all_reduce_16bit_kernel<__half>
        <<<kCollectiveBlocks, kCollectiveThreads, 0, stream>>>(x, y, vectors, peers);
  else
    all_reduce_f32_kernel<<<kCollectiveBlocks, kCollectiveThreads, 0, stream>>>(x, y, vectors,
                                                                                peers);
  L2KV_CUDA_CHECK(cudaGetLastError());
}

void one_shot_all_reduce_add_rmsnorm(CollectiveType type, const void* partial, float* residual,
                                     const void* weight, float eps, int32_t rows, int32_t hidden,
                                     void* out, const CollectivePeers& peers, cudaStream_t stream) {
  if (type == CollectiveType::kFloat32)
    throw Error("one-shot all-reduce + RMSNorm: a 16-bit type is needed");
  if (rows < 1 || hidden < 8 || hidden % 8 != 0)
    throw Error("one-shot all-reduce + RMSNorm: " + std::to_string(rows) + " rows of " +
                std::to_string(hidden) + " (a positive multiple of 8)");
  check_call(partial, out, int64_t{rows} * hidden * 2, peers, "all-reduce + RMSNorm");
  if (residual == nullptr || weight == nullptr || out == nullptr ||
      reinterpret_cast<uintptr_t>(residual) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(weight) % 16 != 0)
    throw Error(
        "one-shot all-reduce + RMSNorm: residual, weight and output must be 16-byte "
        "aligned buffers");
  const auto* x = static_cast<const uint4*>(partial);
  const auto* w = static_cast<const uint4*>(weight);
  auto* y = static_cast<uint4*>(out);
  if (type == CollectiveType::kBFloat16)
    all_reduce_add_rmsnorm_kernel<__nv_bfloat16>
        <<<kCollectiveBlocks, kCollectiveThreads, 0, stream>>>(x, residual, w, eps, rows, hidden, y,
                                                               peers);
  else
    all_reduce_add_rmsnorm_kernel<__half><<<kCollectiveBlocks, kCollectiveThreads, 0, stream>>>(
        x, residual, w, eps, rows, hidden, y, peers);
  L2KV_CUDA_CHECK(cudaGetLastError());
}

void one_shot_gather_to_first(const void* in, void* out, int64_t bytes,
                              const CollectivePeers& peers, cudaStream_t stream) {
  check_call(in, out, bytes, peers, "gather");
  if (peers.rank == 0 && out == nullptr) throw Error("one-shot gather: rank 0 has no output");
  gather_to_first_kernel<<<kCollectiveBlocks, kCollectiveThreads, 0, stream>>>(
      static_cast<const uint4*>(in), static_cast<uint4*>(out), bytes / 16, peers);
  L2KV_CUDA_CHECK(cudaGetLastError());
}

}  // namespace l2kv::ops
