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
#include <cuda/atomic>
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
  // so 4 stages of 16 KiB let three blocks share an SM: more warps to hide that work. head_dim
  // 256 (Gemma 3): 3 stages of 64 KiB, or 4 of 32 KiB for fp8, one block per SM.
  static constexpr int kStages = kFp8 ? 4 : (kHeadDim >= 128 ? 3 : 4);
  // Blocks per SM the register budget is set for (__launch_bounds__).
  static constexpr int kMinBlocks = kFp8 && kHeadDim <= 128 ? 3 : 1;
  static constexpr int kTileElems = kSplitTileTokens * kHeadDim;
  static constexpr int kKSteps = kHeadDim / 16;   // MMA k-steps of Q.K
  static constexpr int kOutTiles = kHeadDim / 8;  // MMA n-tiles of P.V
  static constexpr size_t kStageBytes = size_t{2} * kTileElems * (kFp8 ? 1 : 2);
  static constexpr size_t kSmemBytes = kStages * kStageBytes;
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

// Shared-memory layout of a block's epilogue, over the pipeline buffers: per warp and query
// head the running max and sum, then the warp's O rows scaled by their softmax share, padded
// so the 8 rows a warp stores start in different banks.
template <int kHeadDim>
struct Epilogue {
  static constexpr int kRowStride = kHeadDim + 4;
  static constexpr size_t kBytes =
      (2 * kWarps * kMaxGqaGroup + kWarps * kMaxGqaGroup * kRowStride) * sizeof(float);
  float* warp_max;
  float* warp_sum;
  float* rows;
  __device__ explicit Epilogue(unsigned char* smem)
      : warp_max(reinterpret_cast<float*>(smem)),
        warp_sum(warp_max + kWarps * kMaxGqaGroup),
        rows(warp_sum + kWarps * kMaxGqaGroup) {}
  __device__ float* row(int warp, int head) const {
    return rows + (warp * kMaxGqaGroup + head) * kRowStride;
  }
};

// Stores 4 floats as 4 consecutive 16-bit values (8 bytes, aligned).
template <typename T>
__device__ __forceinline__ void store4(T* dst, float4 v) {
  using Traits = tc::ElementTraits<T>;
  *reinterpret_cast<uint2*>(dst) = make_uint2(Traits::pack(v.x, v.y), Traits::pack(v.z, v.w));
}

// Combines the normalized partial outputs of all slices of one (sequence, KV head) by their
// log-sum-exp weights. This runs on the kernel's tail, so it is built for latency: each thread
// owns 4 output dims of one head and issues the loads of up to kChunk slices' partials and
// log-sum-exps at once (one L2 round trip per kChunk slices), folding them in with an online
// maximum.
template <typename T, int kHeadDim>
__device__ __forceinline__ void merge_partials(const SplitKernelArgs& a, int splits, int64_t first,
                                               int group, T* out) {
  constexpr int kChunk = 16;
  constexpr int kQuads = kHeadDim / 4;
  const int64_t slot_stride = int64_t{group} * kQuads;  // in float4
  for (int i = threadIdx.x; i < group * kQuads; i += kThreads) {
    const int h = i / kQuads;
    const float4* partial =
        reinterpret_cast<const float4*>(a.partial_out) + first * slot_stride + i;
    const float* lse = a.partial_lse + first * group + h;
    float m = -INFINITY;
    float sum = 0.f;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s0 = 0; s0 < splits; s0 += kChunk) {
      float l[kChunk];
      float4 v[kChunk];
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        const bool in = s0 + u < splits;
        l[u] = in ? __ldcg(lse + (s0 + u) * group) : -INFINITY;
        v[u] = in ? __ldcg(partial + (s0 + u) * slot_stride) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
      float chunk_max = m;
#pragma unroll
      for (int u = 0; u < kChunk; ++u) chunk_max = fmaxf(chunk_max, l[u]);
      // Slices a sliding window hides have log-sum-exp -inf: a chunk of only those (with none
      // before it) keeps the maximum at -inf, and 0 in its place avoids (-inf) - (-inf).
      const float safe_max = chunk_max == -INFINITY ? 0.f : chunk_max;
      const float rescale = exp2f(m - safe_max);  // 0 on the first chunk (m = -inf)
      sum *= rescale;
      acc.x *= rescale;
      acc.y *= rescale;
      acc.z *= rescale;
      acc.w *= rescale;
#pragma unroll
      for (int u = 0; u < kChunk; ++u) {
        const float w = exp2f(l[u] - safe_max);  // 0 past the last slice and for hidden ones
        sum += w;
        acc.x += w * v[u].x;
        acc.y += w * v[u].y;
        acc.z += w * v[u].z;
        acc.w += w * v[u].w;
      }
      m = chunk_max;
    }
    const float inv = 1.f / sum;
    store4(out + static_cast<int64_t>(i) * 4,
           make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv));
  }
}

// T: the model's dtype (Q, output, MMA operands). kFp8: K/V stored as E4M3 bytes.
template <typename T, int kHeadDim, bool kFp8>
__global__ void __launch_bounds__(kThreads, (SplitShape<kHeadDim, kFp8>::kMinBlocks))
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
  static_assert(Epilogue<kHeadDim>::kBytes <= Shape::kSmemBytes,
                "the epilogue reuses the pipeline buffers");
  extern __shared__ __align__(128) unsigned char smem_raw[];
  __shared__ int is_last_arrival;

  // The output projection behind this kernel may be launched with PDL and start now: it waits
  // for this grid before it reads the attention output.
  ptx::launch_dependents();
  // Graph mode: the grid is fixed at capture and the plan of each replay may use fewer blocks
  // (the item array has room for the whole grid: both loads go out together).
  const SplitWorkItem item = a.items[blockIdx.x];
  if (a.num_items != nullptr && static_cast<int>(blockIdx.x) >= __ldg(a.num_items)) return;
  const DecodeAttentionParams& p = a.params;
  const int group = p.num_q_heads / p.kv.num_kv_heads;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int block_shift = __ffs(p.kv.block_size) - 1;
  const bool evict_first = a.load_hint == L2EvictionHint::kEvictFirst;
  const uint64_t load_policy = evict_first ? ptx::make_l2_policy(L2EvictionHint::kEvictFirst) : 0;
  // A sliding window hides the tokens before window_begin: the slice starts at the first
  // 16-token row group that holds a visible one (load_kv_tile keeps a thread's rows in one KV
  // block), the rest of that group is masked below. A slice wholly before the window does no
  // work and leaves an empty partial (its log-sum-exp -inf).
  const int window_begin =
      p.sliding_window > 0 ? __ldg(p.kv.seq_lens + item.seq) - p.sliding_window : 0;
  const int token_begin = max(item.token_begin, window_begin & ~15);
  const int num_tiles =
      max(0, (item.token_end - token_begin + kSplitTileTokens - 1) / kSplitTileTokens);
  // A split pair's merge needs these at the very end; loaded now, they are there by then.
  const bool is_split = item.partial_slot >= 0;
  const int pair_splits = is_split ? __ldg(a.pair_num_splits + item.pair) : 1;
  const int64_t pair_first_slot = is_split ? __ldg(a.pair_first_slot + item.pair) : 0;

  auto tile_begin = [&](int t) { return token_begin + t * kSplitTileTokens; };
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

  int stages_issued = 0;  // of the prologue's kStages - 1 commit groups
  if (a.pdl) {
    // The kernel ahead (RoPE + KV write) may still run. The plan, block table and lengths were
    // uploaded before it, and of the planned sequences (one new token each, also in a step with
    // prompt chunks) it writes only the newest token; the KV before that was written by earlier
    // steps, which ended before this step began (the host reads each step's tokens first), and
    // nothing in a step rewrites it (no block copies, no multi-token decode rows: either would
    // have to end this). So the prologue's tiles that end before the newest token go to shared
    // memory now, and the rest of the older KV to L2, where the loads after the wait find it.
    const int written_by_previous = __ldg(p.kv.seq_lens + item.seq) - 1;
    for (; stages_issued < Shape::kStages - 1 && stages_issued < num_tiles &&
           tile_end(stages_issued) <= written_by_previous;
         ++stages_issued) {
      load_tile(stages_issued, stages_issued);
      ptx::cp_async_commit();
    }
    for (int t = stages_issued; t < prologue_tiles && tile_begin(t) < written_by_previous; ++t)
      prefetch_tile<Stored>(a, item, tile_begin(t), min(tile_end(t), written_by_previous),
                            block_shift);
    ptx::grid_dependency_wait();  // Q and the newest K/V are read only after this
  }

  // Prologue: fill all but one stage, then put the next `prefetch_distance` tiles in flight
  // to L2, so from the start that many tiles beyond the pipeline are on their way.
  for (int s = stages_issued; s < Shape::kStages - 1; ++s) {
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
    const T* q = static_cast<const T*>(p.q) + (static_cast<int64_t>(item.q_row) * p.num_q_heads +
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
  const float scale_log2 = p.softmax_scale * kLog2e * (kFp8 ? p.kv.key_scale() : 1.f) / kQScale;

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
    const int token0 = token_begin + tile * kSplitTileTokens + warp_row + quad * 2;
    float logits[2][2];
    float tile_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int token = token0 + n * 8 + i;
        const bool valid = token < item.token_end && token >= window_begin;
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

  // Merge the 4 warps' states: each warp scales its O rows by its share of the softmax and
  // stores them; every thread then sums 4 warps' values for 4 output dims at a time.
  Epilogue<kHeadDim> e(smem_raw);
  if (quad == 0) {
    e.warp_max[warp * kMaxGqaGroup + head_row] = row_max;
    e.warp_sum[warp * kMaxGqaGroup + head_row] = row_sum;
  }
  __syncthreads();
  float m = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) m = fmaxf(m, e.warp_max[w * kMaxGqaGroup + head_row]);
  const float safe_m = m == -INFINITY ? 0.f : m;  // padding rows: every warp's max is -inf
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w)
    total += e.warp_sum[w * kMaxGqaGroup + head_row] *
             exp2f(e.warp_max[w * kMaxGqaGroup + head_row] - safe_m);
  // fp8: O used the stored V, whose scale applies here.
  const float v_scale = kFp8 ? p.kv.value_scale() : 1.f;
  // total is 0 only in a slice a sliding window hides entirely: its partial is 0.
  const float weight =
      head_row < group && total > 0.f ? exp2f(row_max - safe_m) / total * v_scale : 0.f;
  float* my_row = e.row(warp, head_row);
#pragma unroll
  for (int t = 0; t < Shape::kOutTiles; ++t) {
    if constexpr (kFp8) {  // n-tile t: dims (t / 2) * 16 + 2n + t % 2, n = 2 quad + {0, 1}
      my_row[(t / 2) * 16 + quad * 4 + t % 2] = o_acc[t][0] * weight;
      my_row[(t / 2) * 16 + quad * 4 + 2 + t % 2] = o_acc[t][1] * weight;
    } else {
      *reinterpret_cast<float2*>(my_row + t * 8 + quad * 2) =
          make_float2(o_acc[t][0] * weight, o_acc[t][1] * weight);
    }
  }
  if (is_split && warp == 0 && quad == 0 && head_row < group)
    a.partial_lse[static_cast<int64_t>(item.partial_slot) * group + head_row] = m + log2f(total);
  __syncthreads();

  T* out = static_cast<T*>(p.out);
  const int64_t out_row0 = static_cast<int64_t>(item.q_row) * p.num_q_heads + item.kv_head * group;
  constexpr int kQuads = kHeadDim / 4;
  for (int i = threadIdx.x; i < group * kQuads; i += kThreads) {
    const int h = i / kQuads;
    const int d = (i % kQuads) * 4;
    float4 acc = *reinterpret_cast<const float4*>(e.row(0, h) + d);
#pragma unroll
    for (int w = 1; w < kWarps; ++w) {
      const float4 v = *reinterpret_cast<const float4*>(e.row(w, h) + d);
      acc.x += v.x;
      acc.y += v.y;
      acc.z += v.z;
      acc.w += v.w;
    }
    if (!is_split) {
      store4(out + (out_row0 + h) * kHeadDim + d, acc);
    } else {
      float* partial = a.partial_out + (int64_t{item.partial_slot} * group + h) * kHeadDim;
      *reinterpret_cast<float4*>(partial + d) = acc;
    }
  }
  if (!is_split) return;

  // The last slice of this (sequence, KV head) to finish merges all partials. The barrier
  // orders the block's partial stores before thread 0's arrival; the arrival's release makes
  // them visible with it (fences are cumulative), and its acquire orders the last block's
  // reads of the others' partials after their arrivals.
  __syncthreads();
  if (threadIdx.x == 0) {
    cuda::atomic_ref<int32_t, cuda::thread_scope_device> arrivals(a.pair_arrivals[item.pair]);
    const int arrived = arrivals.fetch_add(1, cuda::memory_order_acq_rel) + 1;
    is_last_arrival = arrived == pair_splits;
    if (is_last_arrival) arrivals.store(0, cuda::memory_order_relaxed);  // for the next launch
  }
  __syncthreads();
  if (!is_last_arrival) return;
  merge_partials<T, kHeadDim>(a, pair_splits, pair_first_slot, group, out + out_row0 * kHeadDim);
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
    if (head_dim == 256) return by_storage(tag, std::integral_constant<int, 256>{});
    throw Error("split decode: unsupported head_dim " + std::to_string(head_dim));
  };
  if (dtype == DType::kBFloat16)
    by_dim(static_cast<__nv_bfloat16*>(nullptr));
  else
    by_dim(static_cast<__half*>(nullptr));
}

}  // namespace

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
