// paged_v1: the paper's baseline decode kernel, in the style of vLLM's paged-attention v1,
// written from its description. One thread block per (query head, sequence); its warps walk
// the sequence's KV blocks (warp w takes blocks w, w+W, ...); in Q.K a group of threads owns
// one token; logits stay in shared memory; then the warps walk the blocks again for P.V.
// With prefetch on, each warp first issues cp.async.bulk.prefetch.L2 for the block it will
// process `distance` iterations later (the paper's Algorithm 1), for K and then for V.
// An fp8 cache is read the same way, 16 bytes per load, widened to fp32 in registers.
// Past 48K tokens the logits no longer fit in shared memory: as in vLLM's paged-attention v2,
// a sequence is cut into partitions, each block walks its partitions exactly as above (logits
// of one partition in shared memory), writes the partition's max, exp-sum and output, and a
// reduce kernel merges them. Up to 48K there is one partition and no reduce: the v1 kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <type_traits>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/per_device.h"
#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/fp8.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/tensor_core.cuh"
#include "l2kv/kv_cache/paged_kv_prefetch.cuh"

namespace l2kv {
namespace {

constexpr int kV1Warps = 4;
constexpr int kV1Threads = kV1Warps * 32;
constexpr int kV1MaxSeqLen = kPagedV1SinglePassMaxLen;  // logits: 192 KiB of shared memory

template <int kHeadDim, int kBlockSize, int kElemBytes>
struct PagedV1Shape {
  static constexpr int kThreadGroup = kBlockSize >= 32 ? 1 : 32 / kBlockSize;  // threads per token
  static constexpr int kTokensPerPass = 32 / kThreadGroup;
  static constexpr int kPasses = kBlockSize / kTokensPerPass;
  static constexpr int kVecElems = 16 / kElemBytes;  // one 16-byte load
  static constexpr int kVecsPerThread = kHeadDim / kVecElems / kThreadGroup;
  static constexpr int kVElemsPerLane = kHeadDim / 32;  // P.V: lane owns these dims
  static_assert(kPasses >= 1 && kVecsPerThread >= 1);
};

// Shared memory: q [D] | reduction [2W] | per-warp output [W][D] | logits [partition].
template <int kHeadDim>
constexpr int v1_fixed_smem_floats() {
  return kHeadDim + 2 * kV1Warps + kV1Warps * kHeadDim;
}

// Stored elements -> floats: 16-bit pairs, or E4M3 pairs widened through fp16.
template <typename T, bool kFp8>
struct StoredPairs {
  using Stored = std::conditional_t<kFp8, uint8_t, T>;
  static constexpr int kPerWord = kFp8 ? 4 : 2;
  // Elements 2i and 2i+1 of a 32-bit word.
  __device__ static float2 pair(uint32_t word, int i) {
    if constexpr (kFp8) {
      const uint32_t half2 = fp8::widen2_half((word >> (16 * i)) & 0xffffu);
      return __half22float2(*reinterpret_cast<const __half2*>(&half2));
    } else {
      return tc::ElementTraits<T>::unpack(word);
    }
  }
  // The kN (2 or 4) consecutive elements at `src`, in one load of 2-8 bytes.
  template <int kN>
  __device__ static void load(const Stored* src, float (&out)[kN]) {
    static_assert(kN == 2 || kN == 4);
    constexpr int kBytes = kN * static_cast<int>(sizeof(Stored));
    uint32_t words[2];
    if constexpr (kBytes == 8) {
      const uint2 raw = *reinterpret_cast<const uint2*>(src);
      words[0] = raw.x;
      words[1] = raw.y;
    } else if constexpr (kBytes == 4) {
      words[0] = *reinterpret_cast<const uint32_t*>(src);
    } else {
      words[0] = *reinterpret_cast<const uint16_t*>(src);
    }
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) {
      const float2 f = pair(words[i * 2 / kPerWord], i % (kPerWord / 2));
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
};

// Where the partitions of a sequence longer than one partition leave their results:
// slot (seq, head, partition) = (seq * heads + head) * max_partitions + partition.
struct V1Partials {
  int32_t partition_tokens = 0;  // a multiple of the block size
  int32_t max_partitions = 1;
  float* max = nullptr;  // [slots]
  float* sum = nullptr;  // [slots]: exp-sum relative to the partition's max
  float* out = nullptr;  // [slots][D]: the partition's normalized output (V scale applied)
};

__device__ __forceinline__ bool v1_length_ok(int len, int max_seq_len) {
  return len >= 1 && len <= max_seq_len;
}

// T: the model's dtype (Q, output). kFp8: K/V stored as E4M3 bytes with per-layer scales.
// kPartitioned: the launch may cut sequences into partitions (a separate instantiation, so the
// single pass keeps the v1 kernel's code and registers: the partition loop costs up to 80 more).
template <typename T, int kHeadDim, int kBlockSize, bool kFp8, bool kPartitioned>
__global__ void __launch_bounds__(kV1Threads)
    paged_v1_kernel(const DecodeAttentionParams p, const KvPrefetch prefetch,
                    const V1Partials parts) {
  using Pairs = StoredPairs<T, kFp8>;
  using Stored = typename Pairs::Stored;
  using Shape = PagedV1Shape<kHeadDim, kBlockSize, sizeof(Stored)>;
  using Traits = tc::ElementTraits<T>;
  extern __shared__ float smem[];
  float* q_smem = smem;
  float* reduce_smem = q_smem + kHeadDim;
  float* out_smem = reduce_smem + 2 * kV1Warps;
  float* logits = out_smem + kV1Warps * kHeadDim;

  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const PagedKvCache& kv = p.kv;
  const int group = p.num_q_heads / kv.num_kv_heads;
  const int kv_head = head / group;
  const int len = kv.seq_lens[seq];
  const int64_t out_offset = (static_cast<int64_t>(seq) * p.num_q_heads + head) * kHeadDim;
  // Shared memory and the workspace are sized for p.max_seq_len: a device length beyond it (or
  // below 1) is a caller error the host checks rule out; answer NaN rather than a clamped row.
  if (!v1_length_ok(len, p.max_seq_len)) {
    if (blockIdx.z == 0)
      for (int i = threadIdx.x; i < kHeadDim; i += kV1Threads)
        static_cast<T*>(p.out)[out_offset + i] = Traits::from_float(__int_as_float(0x7fffffff));
    return;
  }
  const int num_seq_blocks = (len + kBlockSize - 1) / kBlockSize;
  const int num_parts =
      kPartitioned ? (len + parts.partition_tokens - 1) / parts.partition_tokens : 1;
  const int32_t* table = kv.block_table + static_cast<int64_t>(seq) * kv.max_blocks_per_seq;
  const Stored* k_pool = static_cast<const Stored*>(kv.k_pool);
  const Stored* v_pool = static_cast<const Stored*>(kv.v_pool);
  // fp8: logits use the stored K and the output the stored V; their scales apply here.
  const float logit_scale = p.softmax_scale * (kFp8 ? kv.key_scale() : 1.f);
  const float v_scale = kFp8 ? kv.value_scale() : 1.f;
  // Blocks ahead; 0 = off. Under GQA the group's thread blocks read the same KV and run side
  // by side, so by default only the first of them prefetches: the others' would be redundant.
  const bool prefetches = !prefetch.group_leader_only || head % group == 0;
  const int prefetch_stride = prefetches ? prefetch.distance * kV1Warps : 0;

  const T* q =
      static_cast<const T*>(p.q) + (static_cast<int64_t>(seq) * p.num_q_heads + head) * kHeadDim;
  for (int i = threadIdx.x; i < kHeadDim; i += kV1Threads) q_smem[i] = Traits::to_float(q[i]);
  __syncthreads();

  // Q.K: thread group `lane / G` owns one token; its G threads split head_dim in 16B vectors.
  const int group_lane = lane % Shape::kThreadGroup;
  const int group_token = lane / Shape::kThreadGroup;
  float q_regs[Shape::kVecsPerThread][Shape::kVecElems];
#pragma unroll
  for (int v = 0; v < Shape::kVecsPerThread; ++v)
#pragma unroll
    for (int e = 0; e < Shape::kVecElems; ++e)
      q_regs[v][e] = q_smem[(v * Shape::kThreadGroup + group_lane) * Shape::kVecElems + e];

  // Walks blocks [first_block, end_block) of the sequence: partition `part`, or with `direct`
  // the whole sequence, whose output it writes.
  auto walk = [&](const int part, const int first_block, const int end_block, const bool direct) {
    const int first_token = first_block * kBlockSize;
    float qk_max = -FLT_MAX;
    for (int b = first_block + warp; b < end_block; b += kV1Warps) {
      const int32_t physical = table[b];
      if (prefetch_stride > 0 && b + prefetch_stride < end_block)
        prefetch_kv_block(kv, k_pool, table[b + prefetch_stride], kv_head, 0, kBlockSize, lane, 32,
                          prefetch.hint);
#pragma unroll
      for (int pass = 0; pass < Shape::kPasses; ++pass) {
        const int token_in_block = pass * Shape::kTokensPerPass + group_token;
        const Stored* k_row = k_pool + kv.offset(physical, token_in_block, kv_head);
        float dot = 0.f;
#pragma unroll
        for (int v = 0; v < Shape::kVecsPerThread; ++v) {
          const uint4 raw = *reinterpret_cast<const uint4*>(
              k_row + (v * Shape::kThreadGroup + group_lane) * Shape::kVecElems);
          const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
          for (int w = 0; w < 4; ++w)
#pragma unroll
            for (int i = 0; i < Pairs::kPerWord / 2; ++i) {
              const float2 k2 = Pairs::pair(words[w], i);
              const int e = w * Pairs::kPerWord + 2 * i;
              dot += q_regs[v][e] * k2.x + q_regs[v][e + 1] * k2.y;
            }
        }
#pragma unroll
        for (int m = Shape::kThreadGroup / 2; m >= 1; m /= 2)
          dot += __shfl_xor_sync(0xffffffffu, dot, m);
        const int token = b * kBlockSize + token_in_block;
        if (group_lane == 0) {
          const float logit = token < len ? dot * logit_scale : -FLT_MAX;
          logits[token - first_token] = logit;
          qk_max = fmaxf(qk_max, logit);
        }
      }
    }

    // Softmax over the partition's logits held in shared memory.
#pragma unroll
    for (int m = 16; m >= 1; m /= 2)
      qk_max = fmaxf(qk_max, __shfl_xor_sync(0xffffffffu, qk_max, m));
    if (lane == 0) reduce_smem[warp] = qk_max;
    __syncthreads();
    qk_max = reduce_smem[0];
#pragma unroll
    for (int w = 1; w < kV1Warps; ++w) qk_max = fmaxf(qk_max, reduce_smem[w]);
    float exp_sum = 0.f;
    const int padded_len = (end_block - first_block) * kBlockSize;
    const int part_len = len - first_token;  // tokens of this partition and beyond
    for (int i = threadIdx.x; i < padded_len; i += kV1Threads) {
      const float e = i < part_len ? __expf(logits[i] - qk_max) : 0.f;
      logits[i] = e;
      exp_sum += e;
    }
#pragma unroll
    for (int m = 16; m >= 1; m /= 2) exp_sum += __shfl_xor_sync(0xffffffffu, exp_sum, m);
    if (lane == 0) reduce_smem[kV1Warps + warp] = exp_sum;
    __syncthreads();
    exp_sum = 0.f;
#pragma unroll
    for (int w = 0; w < kV1Warps; ++w) exp_sum += reduce_smem[kV1Warps + w];
    const float inv_sum = v_scale / exp_sum;

    // P.V: each lane owns kVElemsPerLane consecutive dims of every V row.
    float acc[Shape::kVElemsPerLane] = {};
    for (int b = first_block + warp; b < end_block; b += kV1Warps) {
      const int32_t physical = table[b];
      if (prefetch_stride > 0 && b + prefetch_stride < end_block)
        prefetch_kv_block(kv, v_pool, table[b + prefetch_stride], kv_head, 0, kBlockSize, lane, 32,
                          prefetch.hint);
#pragma unroll 16
      for (int t = 0; t < kBlockSize; ++t) {
        const float prob = logits[(b - first_block) * kBlockSize + t];  // 0 beyond the length
        const Stored* v_row =
            v_pool + kv.offset(physical, t, kv_head) + lane * Shape::kVElemsPerLane;
        float v[Shape::kVElemsPerLane];
        Pairs::load(v_row, v);
#pragma unroll
        for (int e = 0; e < Shape::kVElemsPerLane; ++e) acc[e] += prob * v[e];
      }
    }
#pragma unroll
    for (int e = 0; e < Shape::kVElemsPerLane; ++e)
      out_smem[warp * kHeadDim + lane * Shape::kVElemsPerLane + e] = acc[e];
    __syncthreads();
    // One partition: the output itself. Several: this partition's share, for the reduce.
    const int64_t slot =
        (static_cast<int64_t>(seq) * p.num_q_heads + head) * parts.max_partitions + part;
    for (int i = threadIdx.x; i < kHeadDim; i += kV1Threads) {
      float sum = 0.f;
#pragma unroll
      for (int w = 0; w < kV1Warps; ++w) sum += out_smem[w * kHeadDim + i];
      if (direct)
        static_cast<T*>(p.out)[out_offset + i] = Traits::from_float(sum * inv_sum);
      else
        parts.out[slot * kHeadDim + i] = sum * inv_sum;
    }
    if (!direct && threadIdx.x == 0) {
      parts.max[slot] = qk_max;
      parts.sum[slot] = exp_sum;
    }
  };

  if constexpr (!kPartitioned) {
    walk(0, 0, num_seq_blocks, true);
  } else {
    const int blocks_per_part = parts.partition_tokens / kBlockSize;
    for (int part = blockIdx.z; part < num_parts; part += gridDim.z) {
      walk(part, part * blocks_per_part, min((part + 1) * blocks_per_part, num_seq_blocks),
           num_parts == 1);
      // The next partition rewrites the logits, reductions and per-warp outputs.
      if (part + gridDim.z < num_parts) __syncthreads();
    }
  }
}

// Merges the partitions of each (head, sequence) that spans more than one: weights
// exp-sum_p * exp(max_p - max) on each partition's normalized output.
template <typename T>
__global__ void paged_v1_reduce_kernel(const DecodeAttentionParams p, const V1Partials parts) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int len = p.kv.seq_lens[seq];
  if (!v1_length_ok(len, p.max_seq_len)) return;  // the main kernel wrote NaN
  const int num_parts = (len + parts.partition_tokens - 1) / parts.partition_tokens;
  if (num_parts <= 1) return;  // written by the main kernel
  const int64_t first = (static_cast<int64_t>(seq) * p.num_q_heads + head) * parts.max_partitions;
  float global_max = -FLT_MAX;
  for (int i = 0; i < num_parts; ++i) global_max = fmaxf(global_max, parts.max[first + i]);
  float total = 0.f;
  for (int i = 0; i < num_parts; ++i)
    total += parts.sum[first + i] * __expf(parts.max[first + i] - global_max);
  const int head_dim = p.kv.head_dim;
  T* out = static_cast<T*>(p.out) + (static_cast<int64_t>(seq) * p.num_q_heads + head) * head_dim;
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < num_parts; ++i)
      acc += parts.sum[first + i] * __expf(parts.max[first + i] - global_max) *
             parts.out[(first + i) * head_dim + d];
    out[d] = tc::ElementTraits<T>::from_float(acc / total);
  }
}

// Thread blocks below which paged_v1 is latency-bound and kAuto prefetches (see header).
constexpr int kAutoPrefetchMaxBlocksPerSm = 3;

template <typename T, int kHeadDim, int kBlockSize, bool kFp8, bool kPartitioned>
void launch_paged_v1(const DecodeAttentionParams& p, KvPrefetch prefetch, bool auto_prefetch,
                     const V1Partials& parts, int32_t grid_partitions, cudaStream_t stream) {
  auto kernel = paged_v1_kernel<T, kHeadDim, kBlockSize, kFp8, kPartitioned>;
  const size_t smem = (v1_fixed_smem_floats<kHeadDim>() + parts.partition_tokens) * sizeof(float);
  static PerDevice<bool> configured;  // kernel attributes are per device
  configured.value([&](int) {
    const int max_smem = (v1_fixed_smem_floats<kHeadDim>() + kV1MaxSeqLen) * sizeof(float);
    L2KV_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, max_smem));
    return true;
  });
  const int sm_count = current_device_sm_count();
  const dim3 grid(p.num_q_heads, p.kv.batch_size, grid_partitions);
  if (auto_prefetch) {
    int resident = 0;
    L2KV_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, kernel, kV1Threads, smem));
    const int64_t blocks = int64_t{grid.x} * grid.y * grid.z;
    const int64_t per_sm = std::min<int64_t>(resident, (blocks + sm_count - 1) / sm_count);
    const bool latency_bound =
        p.kv.layout == KvLayout::kHND && per_sm < kAutoPrefetchMaxBlocksPerSm;
    prefetch.distance = latency_bound ? 1 : 0;
  }
  kernel<<<grid, kV1Threads, smem, stream>>>(p, prefetch, parts);
  L2KV_CUDA_CHECK_LAUNCH();
  if constexpr (kPartitioned) {
    paged_v1_reduce_kernel<T>
        <<<dim3(p.num_q_heads, p.kv.batch_size), kHeadDim, 0, stream>>>(p, parts);
    L2KV_CUDA_CHECK_LAUNCH();
  }
}

// The single pass where one partition covers the bound, else the partitioned kernel + reduce.
template <typename T, int kHeadDim, int kBlockSize, bool kFp8>
void launch_either(const DecodeAttentionParams& p, const KvPrefetch& prefetch, bool auto_prefetch,
                   const V1Partials& parts, int32_t grid_partitions, cudaStream_t stream) {
  if (parts.max_partitions > 1)
    launch_paged_v1<T, kHeadDim, kBlockSize, kFp8, true>(p, prefetch, auto_prefetch, parts,
                                                         grid_partitions, stream);
  else
    launch_paged_v1<T, kHeadDim, kBlockSize, kFp8, false>(p, prefetch, auto_prefetch, parts,
                                                          grid_partitions, stream);
}

template <typename T, int kHeadDim, bool kFp8>
void dispatch_block_size(const DecodeAttentionParams& p, const KvPrefetch& prefetch,
                         bool auto_prefetch, const V1Partials& parts, int32_t grid_partitions,
                         cudaStream_t stream) {
  switch (p.kv.block_size) {
    case 16:
      return launch_either<T, kHeadDim, 16, kFp8>(p, prefetch, auto_prefetch, parts,
                                                  grid_partitions, stream);
    case 32:
      return launch_either<T, kHeadDim, 32, kFp8>(p, prefetch, auto_prefetch, parts,
                                                  grid_partitions, stream);
    case 64:
      return launch_either<T, kHeadDim, 64, kFp8>(p, prefetch, auto_prefetch, parts,
                                                  grid_partitions, stream);
    default:
      throw Error("paged_v1: unsupported block size " + std::to_string(p.kv.block_size));
  }
}

template <typename T, bool kFp8>
void dispatch_head_dim(const DecodeAttentionParams& p, const KvPrefetch& prefetch,
                       bool auto_prefetch, const V1Partials& parts, int32_t grid_partitions,
                       cudaStream_t stream) {
  switch (p.kv.head_dim) {
    case 64:
      return dispatch_block_size<T, 64, kFp8>(p, prefetch, auto_prefetch, parts, grid_partitions,
                                              stream);
    case 128:
      return dispatch_block_size<T, 128, kFp8>(p, prefetch, auto_prefetch, parts, grid_partitions,
                                               stream);
    default:
      throw Error("paged_v1: unsupported head_dim " + std::to_string(p.kv.head_dim));
  }
}

// Both entry points: checks, plans and launches; `partials` holds `capacity` floats.
void run_paged_v1(const DecodeAttentionParams& params, const PrefetchPolicy& policy,
                  float* partials, int64_t capacity, cudaStream_t stream) {
  if (policy.pdl)
    throw Error("prefetch policy " + to_string(policy) +
                ": programmatic dependent launch (+pdl) is a split-kernel option");
  if (params.sliding_window > 0)
    throw Error(
        "paged_v1 has no sliding-window attention (a model with sliding-window layers "
        "needs --attention split)");
  if (params.kv.block_size != 16 && params.kv.block_size != 32 && params.kv.block_size != 64)
    throw Error("paged_v1: unsupported block size " + std::to_string(params.kv.block_size));
  if (params.kv.batch_size < 1 || params.num_q_heads < 1 || params.max_seq_len < 1)
    throw Error("paged_v1: batch, heads and max_seq_len must be positive");
  // A sequence per blockIdx.y.
  if (params.kv.batch_size > kMaxGridDimY)
    throw Error("paged_v1: a batch of " + std::to_string(params.kv.batch_size) +
                " sequences; one launch takes at most " + std::to_string(kMaxGridDimY) +
                " (the split kernel has no such limit: --attention split, or a lower "
                "--max-num-seqs)");
  const PagedV1Plan plan =
      plan_paged_v1(params.max_seq_len, params.kv.block_size, params.kv.batch_size,
                    params.num_q_heads, current_device_sm_count());
  V1Partials parts;
  parts.partition_tokens = plan.partition_tokens;
  parts.max_partitions = plan.max_partitions;
  if (plan.partitioned()) {
    const int64_t needed = paged_v1_workspace_floats(params.kv.batch_size, params.num_q_heads,
                                                     params.kv.head_dim, params.max_seq_len);
    if (partials == nullptr || needed > capacity)
      throw Error("paged_v1: " + std::to_string(params.kv.batch_size) + " sequences of up to " +
                  std::to_string(params.max_seq_len) + " tokens need " + std::to_string(needed) +
                  " floats of partition workspace, " + std::to_string(capacity) +
                  " are reserved (PagedV1Decode::reserve; the engine sizes it from "
                  "--max-num-seqs and --max-model-len)");
    const int64_t slots = int64_t{params.kv.batch_size} * params.num_q_heads * plan.max_partitions;
    parts.max = partials;
    parts.sum = partials + slots;
    parts.out = partials + 2 * slots;
  }
  KvPrefetch prefetch;
  if (policy.enabled()) {
    prefetch.distance =
        policy.mode == PrefetchMode::kFixedDistance ? std::max(1, policy.distance) : 1;
    prefetch.hint = policy.prefetch_hint;
    prefetch.group_leader_only = policy.group_leader_only;
  }
  const bool auto_prefetch = policy.mode == PrefetchMode::kAuto;
  const bool fp8 = params.kv.fp8();
  const int32_t z = plan.grid_partitions;
  if (params.kv.dtype == DType::kBFloat16)
    fp8 ? dispatch_head_dim<__nv_bfloat16, true>(params, prefetch, auto_prefetch, parts, z, stream)
        : dispatch_head_dim<__nv_bfloat16, false>(params, prefetch, auto_prefetch, parts, z,
                                                  stream);
  else
    fp8 ? dispatch_head_dim<__half, true>(params, prefetch, auto_prefetch, parts, z, stream)
        : dispatch_head_dim<__half, false>(params, prefetch, auto_prefetch, parts, z, stream);
}

}  // namespace

PagedV1Decode::~PagedV1Decode() {
  if (partials_) cudaFree(partials_);  // no throwing from a destructor
}

void PagedV1Decode::reserve(int32_t max_batch, int32_t num_q_heads, int32_t head_dim,
                            int32_t max_seq_len) {
  if (max_batch < 1 || num_q_heads < 1 || head_dim < 1 || max_seq_len < 1)
    throw Error("paged_v1: workspace limits must be positive");
  const int64_t floats = paged_v1_workspace_floats(max_batch, num_q_heads, head_dim, max_seq_len);
  if (floats <= capacity_floats_) return;
  if (partials_) L2KV_CUDA_CHECK(cudaFree(partials_));
  partials_ = nullptr;
  capacity_floats_ = 0;
  const size_t bytes = static_cast<size_t>(floats) * sizeof(float);
  if (cudaMalloc(reinterpret_cast<void**>(&partials_), bytes) != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: clear it
    partials_ = nullptr;
    throw Error("paged_v1: " + std::to_string(bytes >> 20) + " MiB of partition workspace for " +
                std::to_string(max_batch) + " sequences of up to " + std::to_string(max_seq_len) +
                " tokens could not be allocated (lower --max-num-seqs or --max-model-len)");
  }
  capacity_floats_ = floats;
}

void PagedV1Decode::run(const DecodeAttentionParams& params, const PrefetchPolicy& policy,
                        cudaStream_t stream) const {
  run_paged_v1(params, policy, partials_, capacity_floats_, stream);
}

void paged_v1_decode(const DecodeAttentionParams& params, const PrefetchPolicy& policy,
                     cudaStream_t stream) {
  if (params.max_seq_len > kV1MaxSeqLen)
    throw Error("paged_v1_decode: a context of " + std::to_string(params.max_seq_len) +
                " tokens needs partitions beyond " + std::to_string(kV1MaxSeqLen) +
                ": run it through a PagedV1Decode with a reserved workspace");
  run_paged_v1(params, policy, nullptr, 0, stream);
}

}  // namespace l2kv
