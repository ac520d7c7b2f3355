#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/core/per_device.h"
#include "l2kv/kernels/attention/prefill_attention_wgmma.h"
#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/sm90_tma_wgmma.cuh"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {
namespace {

constexpr int kHeadDim = 128;
constexpr int kWarpgroupThreads = 128;            // wgmma's unit: four warps
constexpr int kWarpgroupRows = 64;                // wgmma's M
constexpr int kMmaK = 16;                         // wgmma's K for 16-bit operands
constexpr int kWarpRows = 16;                     // rows of the accumulator one warp holds
constexpr int kRows = 2 * kWarpgroupRows;         // query rows per block: two warpgroups
constexpr int kKeys = 128;                        // keys per K/V tile: the S tile's N
constexpr int kThreads = 2 * kWarpgroupThreads;   // the two warpgroups; every thread also copies
constexpr int kAccumulators = kKeys / 2;          // fp32 accumulators of m64n128 per thread
constexpr int kColumnBlocks = kKeys / 8;          // 8-column blocks of the accumulator
constexpr int kKeysPerCopier = 8;                 // consecutive keys one thread copies per tile
constexpr int kChunkElements = 8;                 // 16-bit elements in a 16-byte chunk
constexpr int kStages = 3;                        // K/V tiles per ring: two load while one computes
constexpr int kChunksPerRow = kHeadDim * 2 / 16;  // 16-byte chunks of one 256-byte row
constexpr int kAtomRowBytes = 128;  // a 128-byte swizzle atom holds 64 elements of a row
constexpr int kQAtomBytes = kRows * kAtomRowBytes;
constexpr int kKvAtomBytes = kKeys * kAtomRowBytes;
constexpr int kQBytes = 2 * kQAtomBytes;
constexpr int kKvTileBytes = 2 * kKvAtomBytes;
constexpr int kSmemAlign = 1024;  // the 128-byte swizzle repeats every 8 rows of 128 bytes
constexpr size_t kSmemBytes = kQBytes + size_t{kStages} * 2 * kKvTileBytes + kSmemAlign;
constexpr float kLog2e = 1.4426950408889634f;

// Byte offset of 16-byte chunk `chunk` (0-15) of row `row` in a [rows][128] 16-bit tile stored as
// two [rows][64] atoms `atom_bytes` apart, each row 128 bytes and its chunks XORed with row % 8:
// the layout TMA's 128-byte swizzle writes and the wgmma descriptors name.
__device__ __forceinline__ uint32_t swizzled_offset(int row, int chunk, int atom_bytes) {
  return (chunk >> 3) * atom_bytes + row * kAtomRowBytes + (((chunk & 7) ^ (row & 7)) << 4);
}

// 2^x in one MUFU.EX2 (exp2f adds a range reduction for results below 2^-126, which a softmax
// weight does not need: such a weight is 0 in P's 16 bits).
__device__ __forceinline__ float exp2_flushed(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_wgmma_kernel(const PrefillAttention::WorkItem* items, const T* q, T* out,
                         const PagedKvCache kv, int32_t num_q_heads, float softmax_scale) {
  using Traits = tc::ElementTraits<T>;
  extern __shared__ unsigned char smem_raw[];
  unsigned char* smem = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSmemAlign - 1) & ~uintptr_t{kSmemAlign - 1});
  unsigned char* q_tile = smem;
  auto k_tile = [&](int stage) { return smem + kQBytes + stage * 2 * kKvTileBytes; };
  auto v_tile = [&](int stage) { return k_tile(stage) + kKvTileBytes; };

  const PrefillAttention::WorkItem item = items[blockIdx.x];
  const int group = num_q_heads / kv.num_kv_heads;
  const int rows_used = item.q_count * group;  // rows past it are zero queries, never stored
  const int kv_end = item.first_position + item.q_count;
  const int num_tiles = (kv_end + kKeys - 1) / kKeys;
  const int block_shift = __ffs(kv.block_size) - 1;
  const int tid = threadIdx.x;

  // Q: row r is token r / group of the item, query head kv_head * group + r % group.
  for (int i = tid; i < kRows * kChunksPerRow; i += kThreads) {
    const int row = i / kChunksPerRow, chunk = i % kChunksPerRow;
    const int token = row / group;
    const bool valid = row < rows_used;
    const T* src = q +
                   (static_cast<int64_t>(item.q_row_begin + token) * num_q_heads +
                    item.kv_head * group + row - token * group) *
                       kHeadDim +
                   chunk * kChunkElements;
    ptx::cp_async_16(q_tile + swizzled_offset(row, chunk, kQAtomBytes), valid ? src : q,
                     valid ? 16 : 0);
  }
  // K/V: each thread copies one chunk column of 8 consecutive keys, which lie in one KV block
  // (blocks hold 16+ tokens), so one block-table lookup serves them. Keys at or past kv_end are
  // zero-filled: V's zeros keep P x V finite where P is 0.
  const int32_t* table = kv.block_table + static_cast<int64_t>(item.seq) * kv.max_blocks_per_seq;
  const int copy_chunk = tid % kChunksPerRow, copy_row = tid / kChunksPerRow * kKeysPerCopier;
  static_assert(kThreads / kChunksPerRow * kKeysPerCopier == kKeys);
  static_assert(kHeadDim == kAccumulators * 2, "one m64n128 accumulator set holds O's row");
  const int64_t token_stride = kv.token_stride();
  // The block-table entry of this thread's keys in `tile` (-1 past the end). K's copies look it
  // up one tile ahead of their use and V's reuse K's (V_t is copied a tile after K_t), so no copy
  // waits on a table load.
  auto physical_block = [&](int tile) {
    const int first_key = tile * kKeys + copy_row;
    return first_key < kv_end ? __ldg(table + (first_key >> block_shift)) : -1;
  };
  auto load_tile = [&](const void* pool, int tile, int32_t physical, unsigned char* dst_tile) {
    const T* src_pool = static_cast<const T*>(pool);
    const int first_key = tile * kKeys + copy_row;
    const int64_t offset =
        physical < 0 ? 0
                     : kv.offset(physical, first_key & (kv.block_size - 1), item.kv_head) +
                           copy_chunk * kChunkElements;
#pragma unroll
    for (int r = 0; r < kKeysPerCopier; ++r) {
      const bool valid = first_key + r < kv_end;
      ptx::cp_async_16(dst_tile + swizzled_offset(copy_row + r, copy_chunk, kKvAtomBytes),
                       src_pool + (valid ? offset + r * token_stride : 0), valid ? 16 : 0);
    }
  };

  // This thread's two rows of the warpgroup's 64 (the wgmma accumulator layout): r0 and r0 + 8.
  const int warpgroup = tid / kWarpgroupThreads, lane = tid % 32, quad = lane % 4;
  const int r0 = warpgroup * kWarpgroupRows + (tid % kWarpgroupThreads) / 32 * kWarpRows + lane / 4,
            r1 = r0 + 8;
  // Rows past the item attend to every key (their output is never stored).
  const int pos0 = r0 < rows_used ? item.first_position + r0 / group : kv_end - 1;
  const int pos1 = r1 < rows_used ? item.first_position + r1 / group : kv_end - 1;
  const float scale_log2 = softmax_scale * kLog2e;
  float o_acc[kAccumulators];
#pragma unroll
  for (int i = 0; i < kAccumulators; ++i) o_acc[i] = 0.f;
  float max0 = -INFINITY, max1 = -INFINITY, sum0 = 0.f, sum1 = 0.f;
  const unsigned char* q_rows = q_tile + warpgroup * kWarpgroupRows * kAtomRowBytes;
  uint32_t p_frag[kKeys / kMmaK][4];  // P of the previous tile, the A operand of its P x V

  // The copies of K_{t+2} and V_{t+1}, issued while the tensor cores compute tile t, into the
  // stages S_{t-1} and P_{t-2} V_{t-2} read: every warp is done with those once it has passed
  // tile t's barrier, so one barrier a tile suffices. `block_of_tile` holds the table entries of
  // tiles t + 1 and t + 2 on entry and of t + 2 and t + 3 on return. One commit group a tile,
  // empty past the end, so waiting for all but the newest group always means tiles t / t - 1.
  int32_t block_of_tile[2] = {physical_block(1), physical_block(2)};
  auto copy_ahead = [&](int tile) {
    if (tile + 2 < num_tiles)
      load_tile(kv.k_pool, tile + 2, block_of_tile[1], k_tile((tile + 2) % kStages));
    if (tile + 1 < num_tiles)
      load_tile(kv.v_pool, tile + 1, block_of_tile[0], v_tile((tile + 1) % kStages));
    block_of_tile[0] = block_of_tile[1];
    block_of_tile[1] = physical_block(tile + 3);
    ptx::cp_async_commit();
  };
  // Waits for this thread's copies of K_t and V_{t-1} (the group before the newest), then for
  // everyone's: after the barrier the tile's operands are in shared memory and every warp is done
  // with iteration t - 1's MMAs (S_{t-1} and P_{t-2} V_{t-2}).
  auto wait_for_tile = [&] {
    ptx::cp_async_wait<1>();
    ptx::fence_proxy_async_shared();  // the copies are read by wgmma (the async proxy)
    __syncthreads();
  };
  // S = Q K^T over head_dim in eight k16 slices, 32 bytes apart within an atom.
  auto issue_s = [&](float(&s_acc)[kAccumulators], int tile) {
#pragma unroll
    for (int ks = 0; ks < kHeadDim / kMmaK; ++ks) {
      constexpr int kSlicesPerAtom = kAtomRowBytes / (kMmaK * 2);
      const int atom = ks / kSlicesPerAtom, byte = (ks % kSlicesPerAtom) * kMmaK * 2;
      const uint64_t a = ptx::wgmma_descriptor_k_major_sw128(q_rows + atom * kQAtomBytes + byte);
      const uint64_t b =
          ptx::wgmma_descriptor_k_major_sw128(k_tile(tile % kStages) + atom * kKvAtomBytes + byte);
      ptx::wgmma_m64k16<kKeys, T>(s_acc, a, b, ks > 0 ? 1u : 0u);
    }
    ptx::wgmma_commit();
  };
  // O += P V over a tile's keys in eight k16 slices of 16 keys (2048 bytes apart).
  auto issue_pv = [&](int tile) {
#pragma unroll
    for (int kk = 0; kk < kKeys / kMmaK; ++kk)
      ptx::wgmma_m64n128k16_rs<T>(
          o_acc, p_frag[kk],
          ptx::wgmma_descriptor_mn_major_sw128(v_tile(tile % kStages) + kk * kMmaK * kAtomRowBytes,
                                               kKvAtomBytes),
          1u);
    ptx::wgmma_commit();
  };
  // Causal mask (only where the tile reaches past the item's first position) and online softmax
  // of S in place: column 8j + 2 * quad + i of rows r0 (s_acc[4j + i]) and r1 (s_acc[4j + 2 +
  // i]). Maxima are kept in logit units (the scale is positive), so each weight is one FFMA and
  // one EX2. Returns the factors that rescale O for the new row maxima.
  auto softmax = [&](float(&s_acc)[kAccumulators], int tile) {
    const int tile_start = tile * kKeys;
    const bool masked = tile_start + kKeys - 1 > item.first_position;
    float tile_max0 = -INFINITY, tile_max1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kColumnBlocks; ++j)
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int key = tile_start + j * 8 + quad * 2 + i;
        float& a = s_acc[4 * j + i];
        float& b = s_acc[4 * j + 2 + i];
        if (masked) {
          a = key <= pos0 ? a : -INFINITY;
          b = key <= pos1 ? b : -INFINITY;
        }
        tile_max0 = fmaxf(tile_max0, a);
        tile_max1 = fmaxf(tile_max1, b);
      }
#pragma unroll
    for (int m = 1; m <= 2; m *= 2) {
      tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, m));
      tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, m));
    }
    const float new0 = fmaxf(max0, tile_max0), new1 = fmaxf(max1, tile_max1);
    // A row with every key so far masked keeps -inf: 0 in its place avoids (-inf) - (-inf).
    const float shift0 = new0 == -INFINITY ? 0.f : new0 * scale_log2;
    const float shift1 = new1 == -INFINITY ? 0.f : new1 * scale_log2;
    const float2 corr = {exp2_flushed(fmaf(max0, scale_log2, -shift0)),
                         exp2_flushed(fmaf(max1, scale_log2, -shift1))};
    max0 = new0;
    max1 = new1;
    float part0 = 0.f, part1 = 0.f;
#pragma unroll
    for (int j = 0; j < kColumnBlocks; ++j) {
      s_acc[4 * j] = exp2_flushed(fmaf(s_acc[4 * j], scale_log2, -shift0));
      s_acc[4 * j + 1] = exp2_flushed(fmaf(s_acc[4 * j + 1], scale_log2, -shift0));
      s_acc[4 * j + 2] = exp2_flushed(fmaf(s_acc[4 * j + 2], scale_log2, -shift1));
      s_acc[4 * j + 3] = exp2_flushed(fmaf(s_acc[4 * j + 3], scale_log2, -shift1));
      part0 += s_acc[4 * j] + s_acc[4 * j + 1];
      part1 += s_acc[4 * j + 2] + s_acc[4 * j + 3];
    }
    sum0 = sum0 * corr.x + part0;
    sum1 = sum1 * corr.y + part1;
    return corr;
  };
  // P as the next P x V's A operand: columns 8j.. of k16 slice j / 2; j even gives a[0] (row
  // r0) and a[1] (row r1), j odd a[2] and a[3] (the same rows 8 keys on).
  auto pack_p = [&](const float(&s_acc)[kAccumulators]) {
#pragma unroll
    for (int j = 0; j < kColumnBlocks; ++j) {
      p_frag[j / 2][(j % 2) * 2] = Traits::pack(s_acc[4 * j], s_acc[4 * j + 1]);
      p_frag[j / 2][(j % 2) * 2 + 1] = Traits::pack(s_acc[4 * j + 2], s_acc[4 * j + 3]);
    }
  };

  // Software pipeline: iteration t computes S_t = Q K_t^T while the tensor cores finish
  // P_{t-1} V_{t-1}, so the softmax of tile t overlaps the previous tile's P x V, and the copies
  // two tiles ahead are issued behind both MMAs. The first tile is peeled (no P x V before it): a
  // branch around the P x V issue makes ptxas serialize the wgmmas. Before it, two commit groups:
  // Q with K_0, then K_1 with V_0.
  {
    const int32_t block0 = physical_block(0);
    load_tile(kv.k_pool, 0, block0, k_tile(0));
    ptx::cp_async_commit();
    if (num_tiles > 1) load_tile(kv.k_pool, 1, block_of_tile[0], k_tile(1));
    load_tile(kv.v_pool, 0, block0, v_tile(0));
    ptx::cp_async_commit();
  }
  {
    wait_for_tile();
    float s_acc[kAccumulators];
    ptx::wgmma_fence();
    issue_s(s_acc, 0);
    copy_ahead(0);
    ptx::wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < kAccumulators; ++i) ptx::wgmma_fence_operand(s_acc[i]);
    softmax(s_acc, 0);  // O is still zero: nothing to rescale
    pack_p(s_acc);
  }
  for (int tile = 1; tile < num_tiles; ++tile) {
    wait_for_tile();
    float s_acc[kAccumulators];
    ptx::wgmma_fence();
    issue_s(s_acc, tile);
    issue_pv(tile - 1);
    copy_ahead(tile);
    ptx::wgmma_wait<1>();  // S_t is done; P_{t-1} V_{t-1} may still run
#pragma unroll
    for (int i = 0; i < kAccumulators; ++i) ptx::wgmma_fence_operand(s_acc[i]);
    const float2 corr = softmax(s_acc, tile);
    ptx::wgmma_wait<0>();  // P_{t-1} V_{t-1} is done: O can be rescaled and P overwritten
#pragma unroll
    for (int i = 0; i < kAccumulators; ++i) ptx::wgmma_fence_operand(o_acc[i]);
#pragma unroll
    for (int j = 0; j < kColumnBlocks; ++j) {
      o_acc[4 * j] *= corr.x;
      o_acc[4 * j + 1] *= corr.x;
      o_acc[4 * j + 2] *= corr.y;
      o_acc[4 * j + 3] *= corr.y;
    }
    pack_p(s_acc);
  }
  // The last tile's P x V, once its V has landed.
  ptx::cp_async_wait<0>();
  ptx::fence_proxy_async_shared();
  __syncthreads();
  ptx::wgmma_fence();
  issue_pv(num_tiles - 1);
  ptx::wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < kAccumulators; ++i) ptx::wgmma_fence_operand(o_acc[i]);

#pragma unroll
  for (int m = 1; m <= 2; m *= 2) {
    sum0 += __shfl_xor_sync(0xffffffffu, sum0, m);
    sum1 += __shfl_xor_sync(0xffffffffu, sum1, m);
  }
  auto store_row = [&](int row, float inv_sum, int half) {
    if (row >= rows_used) return;
    const int token = row / group;
    T* dst = out + (static_cast<int64_t>(item.q_row_begin + token) * num_q_heads +
                    item.kv_head * group + row - token * group) *
                       kHeadDim;
#pragma unroll
    for (int j = 0; j < kColumnBlocks; ++j)
      *reinterpret_cast<uint32_t*>(dst + j * 8 + quad * 2) =
          Traits::pack(o_acc[4 * j + 2 * half] * inv_sum, o_acc[4 * j + 2 * half + 1] * inv_sum);
  };
  store_row(r0, 1.f / sum0, 0);
  store_row(r1, 1.f / sum1, 1);
}

template <typename T>
void launch(const PrefillAttention::WorkItem* items, int32_t num_items, const void* q, void* out,
            const PagedKvCache& kv, int32_t num_q_heads, float scale, cudaStream_t stream) {
  auto kernel = prefill_wgmma_kernel<T>;
  static PerDevice<bool> configured;  // the shared-memory limit is a per-device attribute
  configured.value([&](int) {
    L2KV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kSmemBytes)));
    return true;
  });
  kernel<<<num_items, kThreads, kSmemBytes, stream>>>(items, static_cast<const T*>(q),
                                                      static_cast<T*>(out), kv, num_q_heads, scale);
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace

bool prefill_wgmma_supports(const PagedKvCache& kv) {
  return kv.head_dim == kHeadDim && !kv.fp8() &&
         (kv.dtype == DType::kBFloat16 || kv.dtype == DType::kFloat16);
}

int32_t prefill_wgmma_tokens_per_item(int32_t group) {
  if (group < 1 || group > kRows) throw Error("prefill attention: bad query-head group");
  return kRows / group;
}

void launch_prefill_wgmma(const PrefillAttention::WorkItem* items, int32_t num_items, const void* q,
                          void* out, const PagedKvCache& kv, int32_t num_q_heads,
                          float softmax_scale, cudaStream_t stream) {
  if (!prefill_wgmma_supports(kv))
    throw Error("prefill attention: the wgmma kernel needs head_dim 128 and a 16-bit cache");
  if (kv.dtype == DType::kBFloat16)
    launch<__nv_bfloat16>(items, num_items, q, out, kv, num_q_heads, softmax_scale, stream);
  else
    launch<__half>(items, num_items, q, out, kv, num_q_heads, softmax_scale, stream);
}

}  // namespace l2kv
