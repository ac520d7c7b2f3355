// Split-KV decode attention (see split_decode.h). One thread block = one work item: a slice
// of one (sequence, KV head). Per 64-token tile, K and V are copied into shared memory by a
// multi-stage cp.async pipeline (16-byte copies, swizzled rows for conflict-free ldmatrix);
// each of the 4 warps takes 16 tokens and computes S = Q K^T and O += P V with m16n8k16
// tensor-core MMAs, where the M dimension holds the group's query heads (at most 8 of 16
// rows used; the MMA has compute to spare in a memory-bound kernel) and keeps its own online
// softmax state. The warps' states merge in shared memory; a split sequence's last block to
// finish merges all slices' partials.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>
#include <type_traits>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/per_device.h"
#include "l2kv/kernels/attention/kv_tile.cuh"
#include "l2kv/kernels/attention/split_decode_kernel.h"
#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/tensor_core.cuh"
#include "l2kv/kv_cache/paged_kv_prefetch.cuh"

namespace l2kv {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kWarpTokens = kSplitTileTokens / kWarps;  // 16: one MMA k-step of P.V
constexpr float kLog2e = 1.4426950408889634f;

template <int kHeadDim, bool kFp8>
struct SplitShape {
  // 16-bit KV: 3 stages x 32 KiB lets two blocks share an SM; measured on the H100
  // (bench/NOTES.md), 2 stages with 3 blocks/SM matched it and 4-6 stages with 1 block/SM were
  // 7-14 % slower. fp8 KV: a tile is half the bytes and needs more work per byte (widening),
  // so 4 stages of 16 KiB let three blocks share an SM: more warps to hide that work.
  static constexpr int kStages = kFp8 ? 4 : (kHeadDim == 128 ? 3 : 4);
  static constexpr int kTileElems = kSplitTileTokens * kHeadDim;
  static constexpr int kKSteps = kHeadDim / 16;   // MMA k-steps of Q.K
  static constexpr int kOutTiles = kHeadDim / 8;  // MMA n-tiles of P.V
  static constexpr size_t kStageBytes = size_t{2} * kTileElems * (kFp8 ? 1 : 2);
  static constexpr size_t kSmemBytes = kStages * kStageBytes;
  // The cross-warp merge reuses the pipeline buffers.
  static_assert(kWarps * kMaxGqaGroup * (kHeadDim + 2) * sizeof(float) <= kSmemBytes);
};

// L2 prefetch of tokens [tile_begin, tile_end) of one tile, spread over the block's threads.
template <typename T>
__device__ __forceinline__ void prefetch_tile(const SplitKernelArgs& a, const SplitWorkItem& item,
                                              int tile_begin, int tile_end, int block_shift) {
  const PagedKvCache& kv = a.params.kv;
  const int32_t* table = kv.block_table + static_cast<int64_t>(item.seq) * kv.max_blocks_per_seq;
  const int first_block = tile_begin >> block_shift;
  const int last_block = (tile_end - 1) >> block_shift;
  const int blocks = last_block - first_block + 1;
  // Half the threads serve K, half V; within each, HND uses one thread per block and NHD one
  // thread per token row.
  const int half = kThreads / 2;
  const int tid = threadIdx.x % half;
  const T* pool = static_cast<const T*>(threadIdx.x < half ? kv.k_pool : kv.v_pool);
  if (kv.layout == KvLayout::kHND) {
    if (tid >= blocks) return;
    const int block = first_block + tid;
    const int begin = max(tile_begin, block << block_shift) - (block << block_shift);
    const int end = min(tile_end, (block + 1) << block_shift) - (block << block_shift);
    prefetch_kv_block(kv, pool, __ldg(table + block), item.kv_head, begin, end, 0, 1,
                      a.prefetch_hint);
  } else {
    const int token = tile_begin + tid;
    if (token >= tile_end) return;
    const int block = token >> block_shift;
    const int in_block = token & (kv.block_size - 1);
    prefetch_kv_block(kv, pool, __ldg(table + block), item.kv_head, in_block, in_block + 1, 0, 1,
                      a.prefetch_hint);
  }
}

// Combines the normalized partial outputs of all slices of one (sequence, KV head) by their
// log-sum-exp weights. This runs on the kernel's tail, so it is built for latency: the weights
// go to shared memory once, then each thread owns 4 output dims of one head and keeps 8
// 16-byte partial loads in flight.
template <typename T, int kHeadDim>
__device__ __forceinline__ void merge_partials(const SplitKernelArgs& a, const SplitWorkItem& item,
                                               int group, T* out, unsigned char* smem_raw) {
  using Traits = tc::ElementTraits<T>;
  constexpr int kUnroll = 8;
  constexpr int kQuads = kHeadDim / 4;
  const int splits = a.pair_num_splits[item.pair];
  const int64_t first = a.pair_first_slot[item.pair];
  float* weights = reinterpret_cast<float*>(smem_raw);  // [group][splits], then 1/sum per head
  float* inv_sums = weights + group * splits;
  for (int i = threadIdx.x; i < group * splits; i += kThreads) {
    const int h = i / splits, s = i % splits;
    weights[h * splits + s] = __ldcg(a.partial_lse + (first + s) * group + h);
  }
  __syncthreads();
  for (int h = threadIdx.x; h < group; h += kThreads) {
    float m = -INFINITY;
    for (int s = 0; s < splits; ++s) m = fmaxf(m, weights[h * splits + s]);
    float sum = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float w = exp2f(weights[h * splits + s] - m);
      weights[h * splits + s] = w;
      sum += w;
    }
    inv_sums[h] = 1.f / sum;
  }
  __syncthreads();
  const int64_t slot_stride = int64_t{group} * kQuads;  // in float4
  for (int i = threadIdx.x; i < group * kQuads; i += kThreads) {
    const int h = i / kQuads;
    const float4* partial =
        reinterpret_cast<const float4*>(a.partial_out) + first * slot_stride + i;
    const float* w = weights + h * splits;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    auto accumulate = [&](float weight, float4 v) {
      acc.x += weight * v.x;
      acc.y += weight * v.y;
      acc.z += weight * v.z;
      acc.w += weight * v.w;
    };
    int s = 0;
    for (; s + kUnroll <= splits; s += kUnroll) {
      float4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = __ldcg(partial + (s + u) * slot_stride);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) accumulate(w[s + u], v[u]);
    }
    for (; s < splits; ++s) accumulate(w[s], __ldcg(partial + s * slot_stride));
    const float inv = inv_sums[h];
    T* o = out + static_cast<int64_t>(i) * 4;
    o[0] = Traits::from_float(acc.x * inv);
    o[1] = Traits::from_float(acc.y * inv);
    o[2] = Traits::from_float(acc.z * inv);
    o[3] = Traits::from_float(acc.w * inv);
  }
}

// T: the model's dtype (Q, output, MMA operands). kFp8: K/V stored as E4M3 bytes.
template <typename T, int kHeadDim, bool kFp8>
__global__ void __launch_bounds__(kThreads, kFp8 ? 3 : 1)
    split_decode_kernel(const SplitKernelArgs a) {
  using Shape = SplitShape<kHeadDim, kFp8>;
  using Traits = tc::ElementTraits<T>;
  using Stored = std::conditional_t<kFp8, uint8_t, T>;
  // fp8 KV: K and V go from the byte tiles straight into MMA registers, widened there; the
  // MMAs run in fp16 whatever the model's dtype, since E4M3 widens to fp16 in one instruction
  // per pair (to bf16 it takes four) and every E4M3 value is exact in fp16.
  using Mma = std::conditional_t<kFp8, __half, T>;
  using MmaTraits = tc::ElementTraits<Mma>;
  // A bf16 query is scaled by 2^-8 on its way to fp16 (exact, and no overflow below 2^24);
  // the logit scale undoes it.
  constexpr bool kRescaleQ = kFp8 && !std::is_same_v<T, __half>;
  constexpr float kQScale = kRescaleQ ? 1.f / 256 : 1.f;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ int is_last_arrival;

  // Graph mode: the grid is fixed at capture and the plan of each replay may use fewer blocks.
  if (a.num_items != nullptr && static_cast<int>(blockIdx.x) >= *a.num_items) return;
  const SplitWorkItem item = a.items[blockIdx.x];
  const DecodeAttentionParams& p = a.params;
  const int group = p.num_q_heads / p.kv.num_kv_heads;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int block_shift = __ffs(p.kv.block_size) - 1;
  const bool evict_first = a.load_hint == L2EvictionHint::kEvictFirst;
  const uint64_t load_policy = evict_first ? ptx::make_l2_policy(L2EvictionHint::kEvictFirst) : 0;
  const int num_tiles =
      (item.token_end - item.token_begin + kSplitTileTokens - 1) / kSplitTileTokens;

  auto tile_begin = [&](int t) { return item.token_begin + t * kSplitTileTokens; };
  auto tile_end = [&](int t) { return min(tile_begin(t) + kSplitTileTokens, item.token_end); };
  auto k_stage = [&](int s) {
    return reinterpret_cast<Stored*>(smem_raw + s * Shape::kStageBytes);
  };
  auto v_stage = [&](int s) { return k_stage(s) + Shape::kTileElems; };
  auto load_tile = [&](int t, int s) {
    load_kv_tile<Stored, kHeadDim, kThreads>(p.kv, item.seq, item.kv_head, tile_begin(t),
                                             item.token_end, k_stage(s), v_stage(s), block_shift,
                                             evict_first, load_policy);
  };
  const int prologue_tiles = min(num_tiles, Shape::kStages - 1 + a.prefetch_distance);

  if (a.pdl) {
    // The kernel ahead (RoPE + KV write) may still run. The plan, block table and lengths were
    // uploaded before it, and it writes only each sequence's newest token: the KV before that
    // can go to L2 now, so the prologue's loads below find it there.
    const int written_by_previous = __ldg(p.kv.seq_lens + item.seq) - 1;
    for (int t = 0; t < prologue_tiles && tile_begin(t) < written_by_previous; ++t)
      prefetch_tile<Stored>(a, item, tile_begin(t), min(tile_end(t), written_by_previous),
                            block_shift);
    ptx::grid_dependency_wait();  // Q and the newest K/V are read only after this
  }

  // Prologue: fill all but one stage, then put the next `prefetch_distance` tiles in flight
  // to L2, so from the start that many tiles beyond the pipeline are on their way.
#pragma unroll
  for (int s = 0; s < Shape::kStages - 1; ++s) {
    if (s < num_tiles) load_tile(s, s);
    ptx::cp_async_commit();
  }
  for (int t = Shape::kStages - 1; t < prologue_tiles; ++t)
    prefetch_tile<Stored>(a, item, tile_begin(t), tile_end(t), block_shift);

  // Q as the MMA's A operand: row = query head of the group (lane / 4), rows >= group are 0.
  const int head_row = lane / 4;
  const int quad = lane % 4;
  uint32_t q_frag[Shape::kKSteps][4];
  {
    const T* q = static_cast<const T*>(p.q) + (static_cast<int64_t>(item.seq) * p.num_q_heads +
                                               item.kv_head * group + head_row) *
                                                  kHeadDim;
    const bool has_row = head_row < group;
    auto q_pair = [&](int offset) -> uint32_t {
      if (!has_row) return 0u;
      const uint32_t bits = *reinterpret_cast<const uint32_t*>(q + offset);
      if constexpr (kRescaleQ) {
        const float2 f = Traits::unpack(bits);
        return MmaTraits::pack(f.x * kQScale, f.y * kQScale);
      } else {
        return bits;
      }
    };
    // fp8: a K register holds 4 consecutive dims of a token (see below), so the MMA's k
    // order within a 16-dim step is 0 1 4 5 8 9 12 13 | 2 3 6 7 10 11 14 15; Q follows it.
#pragma unroll
    for (int ks = 0; ks < Shape::kKSteps; ++ks) {
      q_frag[ks][0] = q_pair(ks * 16 + (kFp8 ? quad * 4 : quad * 2));
      q_frag[ks][1] = 0u;
      q_frag[ks][2] = q_pair(ks * 16 + (kFp8 ? quad * 4 + 2 : 8 + quad * 2));
      q_frag[ks][3] = 0u;
    }
  }
  // fp8: logits use the stored K, so K's scale joins the softmax scale.
  const float scale_log2 = p.softmax_scale * kLog2e * (kFp8 ? p.kv.k_scale : 1.f) / kQScale;

  float o_acc[Shape::kOutTiles][4] = {};
  float row_max = -INFINITY;  // for query head `head_row`, in log2 units
  float row_sum = 0.f;        // this lane's share; the quad's four lanes sum at the end

  for (int tile = 0; tile < num_tiles; ++tile) {
    ptx::cp_async_wait<Shape::kStages - 2>();
    __syncthreads();  // tile `tile` is in shared memory; stage (tile - 1) is free
    {
      const int next = tile + Shape::kStages - 1;
      if (next < num_tiles) load_tile(next, next % Shape::kStages);
      ptx::cp_async_commit();
      const int ahead = next + a.prefetch_distance;
      if (a.prefetch_distance > 0 && ahead < num_tiles)
        prefetch_tile<Stored>(a, item, tile_begin(ahead), tile_end(ahead), block_shift);
    }
    const int warp_row = warp * kWarpTokens;
    // S = Q K^T for this warp's 16 tokens: two n-tiles of 8 tokens.
    float s_acc[2][4] = {};
    if constexpr (kFp8) {
      // An x4 load's matrix m = lane / 8 is tokens (m % 2) * 8.. of the warp's 16, 16-byte
      // chunk (m / 2) of the pair of chunks loaded; each lane's register holds 4 consecutive
      // bytes (dims) of one token: the first two widen to the MMA's b0, the last two to b1.
      const uint8_t* k_bytes = k_stage(tile % Shape::kStages);
      const int ld_row = warp_row + (lane / 8 % 2) * 8 + lane % 8;
#pragma unroll
      for (int c = 0; c < Shape::kKSteps; c += 2) {
        uint32_t r[4];
        tc::ldmatrix_x4(r, k_bytes + swizzled_bytes<kHeadDim>(ld_row, c + lane / 16));
#pragma unroll
        for (int m = 0; m < 4; ++m) {
          const uint32_t b[2] = {fp8::widen2_half(r[m] & 0xffffu), fp8::widen2_half(r[m] >> 16)};
          tc::mma_m16n8k16<Mma>(s_acc[m % 2], q_frag[c + m / 2], b);
        }
      }
    } else {
      const T* k_tile = k_stage(tile % Shape::kStages);
#pragma unroll
      for (int ks = 0; ks < Shape::kKSteps; ++ks) {
        uint32_t k_frag[4];
        const int row = warp_row + (lane / 16) * 8 + (lane % 8);
        const int chunk = ks * 2 + (lane / 8) % 2;
        tc::ldmatrix_x4(k_frag, k_tile + swizzled<kHeadDim>(row, chunk));
        const uint32_t b0[2] = {k_frag[0], k_frag[1]};
        const uint32_t b1[2] = {k_frag[2], k_frag[3]};
        tc::mma_m16n8k16<Mma>(s_acc[0], q_frag[ks], b0);
        tc::mma_m16n8k16<Mma>(s_acc[1], q_frag[ks], b1);
      }
    }

    // Online softmax on row `head_row` (c0, c1 of each n-tile; c2, c3 are padding rows).
    const int token0 = item.token_begin + tile * kSplitTileTokens + warp_row + quad * 2;
    float logits[2][2];
    float tile_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const bool valid = token0 + n * 8 + i < item.token_end;
        logits[n][i] = valid ? s_acc[n][i] * scale_log2 : -INFINITY;
        tile_max = fmaxf(tile_max, logits[n][i]);
      }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
    const float new_max = fmaxf(row_max, tile_max);
    // A warp whose tokens are all masked keeps max -inf: use 0 to avoid (-inf) - (-inf).
    const float safe_max = new_max == -INFINITY ? 0.f : new_max;
    const float correction = exp2f(row_max - safe_max);
    row_max = new_max;
    float probs[2][2];
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int i = 0; i < 2; ++i) probs[n][i] = exp2f(logits[n][i] - safe_max);
    row_sum = row_sum * correction + probs[0][0] + probs[0][1] + probs[1][0] + probs[1][1];
#pragma unroll
    for (int t = 0; t < Shape::kOutTiles; ++t) {
      o_acc[t][0] *= correction;
      o_acc[t][1] *= correction;
    }

    // O += P V: P (16 heads x 16 tokens) is the A operand straight from the S registers.
    const uint32_t p_frag[4] = {MmaTraits::pack(probs[0][0], probs[0][1]), 0u,
                                MmaTraits::pack(probs[1][0], probs[1][1]), 0u};
    if constexpr (kFp8) {
      // Transposed loads of byte pairs: r[2h] holds tokens 2j, 2j+1 (j = lane % 4) and r[2h+1]
      // tokens 2j+8, 2j+9 of chunk c + h, each as dims (2q, 2q+1), q = lane / 4. Bytes 0 and 2
      // are dim 2q of both tokens, bytes 1 and 3 dim 2q+1: the B operands of an n-tile of even
      // dims and one of odd dims, o_acc[2 (c + h)] and o_acc[2 (c + h) + 1].
      const uint8_t* v_bytes = v_stage(tile % Shape::kStages);
      const int ld_row = warp_row + (lane / 8 % 2) * 8 + lane % 8;
#pragma unroll
      for (int c = 0; c < Shape::kKSteps; c += 2) {
        uint32_t r[4];
        tc::ldmatrix_x4_trans(r, v_bytes + swizzled_bytes<kHeadDim>(ld_row, c + lane / 16));
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
          for (int odd = 0; odd < 2; ++odd) {
            const uint32_t pick = odd ? 0x3131u : 0x2020u;
            const uint32_t b[2] = {fp8::widen2_half(__byte_perm(r[2 * h], 0, pick) & 0xffffu),
                                   fp8::widen2_half(__byte_perm(r[2 * h + 1], 0, pick) & 0xffffu)};
            tc::mma_m16n8k16<Mma>(o_acc[2 * (c + h) + odd], p_frag, b);
          }
      }
    } else {
      const T* v_tile = v_stage(tile % Shape::kStages);
#pragma unroll
      for (int dp = 0; dp < Shape::kOutTiles / 2; ++dp) {
        uint32_t v_frag[4];
        const int row = warp_row + (lane % 8) + ((lane / 8) % 2) * 8;
        const int chunk = dp * 2 + lane / 16;
        tc::ldmatrix_x4_trans(v_frag, v_tile + swizzled<kHeadDim>(row, chunk));
        const uint32_t b0[2] = {v_frag[0], v_frag[1]};
        const uint32_t b1[2] = {v_frag[2], v_frag[3]};
        tc::mma_m16n8k16<Mma>(o_acc[2 * dp], p_frag, b0);
        tc::mma_m16n8k16<Mma>(o_acc[2 * dp + 1], p_frag, b1);
      }
    }
  }
  ptx::cp_async_wait<0>();
  row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
  row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
  __syncthreads();  // all warps are done with the pipeline buffers

  // Merge the 4 warps' states in shared memory: [warp][head] max and sum, [warp][head][D] O.
  float* warp_max = reinterpret_cast<float*>(smem_raw);
  float* warp_sum = warp_max + kWarps * kMaxGqaGroup;
  float* warp_out = warp_sum + kWarps * kMaxGqaGroup;
  if (quad == 0) {
    warp_max[warp * kMaxGqaGroup + head_row] = row_max;
    warp_sum[warp * kMaxGqaGroup + head_row] = row_sum;
  }
#pragma unroll
  for (int t = 0; t < Shape::kOutTiles; ++t) {
    float* row = warp_out + (warp * kMaxGqaGroup + head_row) * kHeadDim;
    if constexpr (kFp8) {  // n-tile t: dims (t / 2) * 16 + 2n + t % 2, n = 2 quad + {0, 1}
      row[(t / 2) * 16 + quad * 4 + t % 2] = o_acc[t][0];
      row[(t / 2) * 16 + quad * 4 + 2 + t % 2] = o_acc[t][1];
    } else {
      row[t * 8 + quad * 2] = o_acc[t][0];
      row[t * 8 + quad * 2 + 1] = o_acc[t][1];
    }
  }
  __syncthreads();

  T* out = static_cast<T*>(p.out);
  const int64_t out_row0 = static_cast<int64_t>(item.seq) * p.num_q_heads + item.kv_head * group;
  const float v_scale = kFp8 ? p.kv.v_scale : 1.f;  // O used the stored V
  for (int i = threadIdx.x; i < group * kHeadDim; i += kThreads) {
    const int h = i / kHeadDim;
    const int d = i % kHeadDim;
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m = fmaxf(m, warp_max[w * kMaxGqaGroup + h]);
    float sum = 0.f;
    float acc = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float weight = exp2f(warp_max[w * kMaxGqaGroup + h] - m);  // 0 for empty warps
      sum += warp_sum[w * kMaxGqaGroup + h] * weight;
      acc += warp_out[(w * kMaxGqaGroup + h) * kHeadDim + d] * weight;
    }
    if (item.partial_slot < 0) {
      out[(out_row0 + h) * kHeadDim + d] = Traits::from_float(acc / sum * v_scale);
    } else {
      a.partial_out[(static_cast<int64_t>(item.partial_slot) * group + h) * kHeadDim + d] =
          acc / sum * v_scale;
      if (d == 0)
        a.partial_lse[static_cast<int64_t>(item.partial_slot) * group + h] = m + log2f(sum);
    }
  }
  if (item.partial_slot < 0) return;

  // The last slice of this (sequence, KV head) to finish merges all partials.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    const int splits = a.pair_num_splits[item.pair];
    const int arrived = atomicAdd(a.pair_arrivals + item.pair, 1) + 1;
    is_last_arrival = arrived == splits;
    if (is_last_arrival) a.pair_arrivals[item.pair] = 0;  // ready for the next launch
  }
  __syncthreads();
  if (!is_last_arrival) return;
  __threadfence();
  merge_partials<T, kHeadDim>(a, item, group, out + out_row0 * kHeadDim, smem_raw);
}
template <typename T, int kHeadDim, bool kFp8>
auto kernel_for() {
  auto kernel = split_decode_kernel<T, kHeadDim, kFp8>;
  static PerDevice<bool> configured;  // the shared-memory limit is a per-device attribute
  configured.value([&](int) {
    L2KV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(SplitShape<kHeadDim, kFp8>::kSmemBytes)));
    return true;
  });
  return kernel;
}

template <typename T, int kHeadDim, bool kFp8>
int32_t ctas_per_sm() {
  int blocks = 0;
  L2KV_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks, kernel_for<T, kHeadDim, kFp8>(), kThreads, SplitShape<kHeadDim, kFp8>::kSmemBytes));
  return blocks;
}

template <typename T, int kHeadDim, bool kFp8>
void launch(const SplitKernelArgs& args, int32_t num_items, cudaStream_t stream) {
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config =
      launch_config(dim3(static_cast<unsigned>(num_items)), dim3(kThreads),
                    SplitShape<kHeadDim, kFp8>::kSmemBytes, stream, args.pdl, attribute);
  L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel_for<T, kHeadDim, kFp8>(), args));
}

// Calls f with a null T* (the model's dtype) and the head_dim and fp8 storage as constants.
template <typename F>
void dispatch(DType dtype, int32_t head_dim, bool fp8, F&& f) {
  auto by_storage = [&](auto* tag, auto dim) {
    if (fp8)
      f(tag, dim, std::true_type{});
    else
      f(tag, dim, std::false_type{});
  };
  auto by_dim = [&](auto* tag) {
    if (head_dim == 128) return by_storage(tag, std::integral_constant<int, 128>{});
    if (head_dim == 64) return by_storage(tag, std::integral_constant<int, 64>{});
    throw Error("split decode: unsupported head_dim " + std::to_string(head_dim));
  };
  if (dtype == DType::kBFloat16)
    by_dim(static_cast<__nv_bfloat16*>(nullptr));
  else
    by_dim(static_cast<__half*>(nullptr));
}

}  // namespace

int32_t split_decode_max_merge_splits(int32_t head_dim, int32_t group, bool fp8) {
  // merge_partials keeps group x splits weights and group inverse sums in the shared memory
  // of the pipeline.
  size_t bytes = 0;
  dispatch(DType::kBFloat16, head_dim, fp8, [&](auto*, auto dim, auto is_fp8) {
    bytes = SplitShape<decltype(dim)::value, decltype(is_fp8)::value>::kSmemBytes;
  });
  const size_t floats = bytes / sizeof(float);
  return static_cast<int32_t>((floats - static_cast<size_t>(group)) / static_cast<size_t>(group));
}

int32_t split_decode_stages(int32_t head_dim, bool fp8) {
  int32_t stages = 0;
  dispatch(DType::kBFloat16, head_dim, fp8, [&](auto*, auto dim, auto is_fp8) {
    stages = SplitShape<decltype(dim)::value, decltype(is_fp8)::value>::kStages;
  });
  return stages;
}

int32_t split_decode_ctas_per_sm(DType dtype, int32_t head_dim, bool fp8) {
  int32_t blocks = 0;
  dispatch(dtype, head_dim, fp8, [&](auto* tag, auto dim, auto is_fp8) {
    using T = std::remove_pointer_t<decltype(tag)>;
    blocks = ctas_per_sm<T, decltype(dim)::value, decltype(is_fp8)::value>();
  });
  return blocks;
}

void launch_split_decode_kernel(const SplitKernelArgs& args, int32_t num_items,
                                cudaStream_t stream) {
  const PagedKvCache& kv = args.params.kv;
  dispatch(kv.dtype, kv.head_dim, kv.fp8(), [&](auto* tag, auto dim, auto is_fp8) {
    using T = std::remove_pointer_t<decltype(tag)>;
    launch<T, decltype(dim)::value, decltype(is_fp8)::value>(args, num_items, stream);
  });
}

}  // namespace l2kv
