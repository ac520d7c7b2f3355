#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>

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
constexpr int kWarpgroupThreads = 128;              // wgmma's unit: four warps
constexpr int kWarpgroupRows = 64;                  // wgmma's M
constexpr int kMmaK = 16;                           // wgmma's K for 16-bit operands
constexpr int kWarpRows = 16;                       // rows of the accumulator one warp holds
constexpr int kConsumers = 2;                       // warpgroups that compute, 64 query rows each
constexpr int kRows = kConsumers * kWarpgroupRows;  // query rows per block
constexpr int kKeys = 128;                          // keys per K/V tile: the S tile's N
constexpr int kConsumerThreads = kConsumers * kWarpgroupThreads;
constexpr int kThreads = kWarpgroupThreads + kConsumerThreads;  // the producer warpgroup first
constexpr int kConsumerWarps = kConsumerThreads / 32;
// setmaxnreg moves registers within the block's own allocation, 168 a thread at launch (64K /
// 384 threads, rounded down to a multiple of 8): what the producer warpgroup gives back is all
// the consumers can take (a larger sum would leave a consumer warp waiting forever).
constexpr int kLaunchRegisters = 65536 / kThreads / 8 * 8;
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
constexpr int kAccumulators = kKeys / 2;          // fp32 accumulators of m64n128 per thread
constexpr int kColumnBlocks = kKeys / 8;          // 8-column blocks of the accumulator
constexpr int kChunkElements = 8;                 // 16-bit elements in a 16-byte chunk
constexpr int kStages = 3;                        // K and V tiles per ring
constexpr int kChunksPerRow = kHeadDim * 2 / 16;  // 16-byte chunks of one 256-byte row
constexpr int kAtomRowBytes = 128;  // a 128-byte swizzle atom holds 64 elements of a row
constexpr int kAtomElements = kAtomRowBytes / 2;
constexpr int kQAtomBytes = kRows * kAtomRowBytes;
constexpr int kKvAtomBytes = kKeys * kAtomRowBytes;
constexpr int kQBytes = 2 * kQAtomBytes;
constexpr int kKvTileBytes = 2 * kKvAtomBytes;
constexpr int kBarriers = 4 * kStages;  // full and empty, of K and of V, per stage
constexpr int kSmemAlign = 1024;        // the 128-byte swizzle repeats every 8 rows of 128 bytes
constexpr size_t kSmemBytes =
    kQBytes + size_t{kStages} * 2 * kKvTileBytes + kBarriers * sizeof(uint64_t) + kSmemAlign;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kRescaleLog2 = 8.f;  // softmax weights stay below 2^8 between rescalings
static_assert(kProducerRegisters * kWarpgroupThreads + kConsumerRegisters * kConsumerThreads <=
              kLaunchRegisters * kThreads);
static_assert(kHeadDim == kAccumulators * 2, "one m64n128 accumulator set holds O's row");
// Named barriers: the consumers' turns to issue MMAs (1, 2) and each consumer's Q (3, 4).
constexpr int kTurnBarrier = 1;
constexpr int kQBarrier = 3;

// K and V pools as 4D tensors (element, token in block, KV head, block) for TMA: a box is 64
// elements of one block's tokens of one head, written 128-byte swizzled.
struct KvTensorMaps {
  CUtensorMap k, v;
};

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

// Shared memory of a block: Q, then rings of kStages K and V tiles, each stage with a "full"
// mbarrier (the producer warp's 32 lanes arrive, and the TMA bytes land) and an "empty" one (the
// 8 consumer warps arrive once their MMAs have read it).
struct Rings {
  unsigned char* base;
  __device__ unsigned char* q() const { return base; }
  // tensor 0 is K, 1 is V
  __device__ unsigned char* tile(int tensor, int stage) const {
    return base + kQBytes + (stage * 2 + tensor) * kKvTileBytes;
  }
  __device__ uint64_t* barriers() const {
    return reinterpret_cast<uint64_t*>(base + kQBytes + kStages * 2 * kKvTileBytes);
  }
  __device__ uint64_t* full(int tensor, int stage) const {
    return barriers() + tensor * kStages + stage;
  }
  __device__ uint64_t* empty(int tensor, int stage) const {
    return barriers() + (2 + tensor) * kStages + stage;
  }
};

// The producer warp: K_0, then K_{t+1} and V_t for each tile t, the order the consumers need
// them in. Each KV block of a tile whose keys all lie before the item's end is one TMA box per
// 64-column half (lane 2p + h takes block p, half h; its block-table entry is read a tile ahead);
// the last tile's partial block is copied by cp.async with the keys past the end zero-filled,
// since V's zeros keep P x V finite where P is 0.
template <typename T>
__device__ __forceinline__ void produce_kv(const Rings& rings,
                                           const PrefillAttention::WorkItem& item,
                                           const PagedKvCache& kv, const KvTensorMaps& maps,
                                           int kv_end, int num_tiles, int ring_base) {
  const int lane = threadIdx.x % 32;
  const int pages = kKeys / kv.block_size;  // KV blocks per tile (block sizes 16-64)
  const int block_shift = __ffs(kv.block_size) - 1;
  const int page = lane / 2, half = lane % 2;
  const int32_t* table = kv.block_table + static_cast<int64_t>(item.seq) * kv.max_blocks_per_seq;
  // KV blocks of `tile` whose keys all lie before the item's end: TMA boxes.
  auto whole_blocks = [&](int tile) { return min(pages, (kv_end - tile * kKeys) >> block_shift); };
  auto entry = [&](int tile) {
    return page < whole_blocks(tile) ? __ldg(table + tile * pages + page) : 0;
  };
  // Rows from `first_row` on by cp.async: the partial block's keys before the end, zeros after.
  auto copy_rows = [&](int tensor, int tile, int first_row, unsigned char* dst) {
    const T* pool = static_cast<const T*>(tensor == 0 ? kv.k_pool : kv.v_pool);
    const int chunk = lane % kChunksPerRow;
    for (int row = first_row + lane / kChunksPerRow; row < kKeys; row += 32 / kChunksPerRow) {
      const int key = tile * kKeys + row;
      const bool valid = key < kv_end;
      const T* src = valid ? pool +
                                 kv.offset(__ldg(table + (key >> block_shift)),
                                           key & (kv.block_size - 1), item.kv_head) +
                                 chunk * kChunkElements
                           : pool;
      ptx::cp_async_16(dst + swizzled_offset(row, chunk, kKvAtomBytes), src, valid ? 16 : 0);
    }
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
    ptx::fence_proxy_async_shared();  // read by wgmma (the async proxy)
  };
  // Every lane arrives once its own copies are in; lane 0 first announces the boxes' bytes.
  auto issue = [&](int tensor, int tile, int32_t physical) {
    const int slot = ring_base + tile, stage = slot % kStages;
    ptx::mbarrier_wait(rings.empty(tensor, stage), ((slot / kStages) & 1) ^ 1);
    unsigned char* dst = rings.tile(tensor, stage);
    uint64_t* full = rings.full(tensor, stage);
    const int blocks = whole_blocks(tile);
    if (lane == 0 && blocks > 0)
      ptx::mbarrier_expect_tx(full, blocks * kv.block_size * kKvTileBytes / kKeys);
    __syncwarp();
    if (page < blocks)
      ptx::tma_load_4d(dst + half * kKvAtomBytes + page * kv.block_size * kAtomRowBytes,
                       tensor == 0 ? &maps.k : &maps.v, full, half * kAtomElements, 0, item.kv_head,
                       physical);
    if (blocks < pages) copy_rows(tensor, tile, blocks * kv.block_size, dst);
    ptx::mbarrier_arrive(full);
  };
  int32_t current = entry(0), next = entry(1);  // table entries of tiles t and t + 1
  issue(0, 0, current);
  for (int tile = 0; tile < num_tiles; ++tile) {
    if (tile + 1 < num_tiles) issue(0, tile + 1, next);
    issue(1, tile, current);
    current = next;
    next = entry(tile + 2);
  }
}

// The k-th item of this block. A block runs items in rounds of gridDim.x, forward in even rounds
// and backward in odd ones: with the list sorted heaviest first, every block's total stays
// within about one item of the others'.
__device__ __forceinline__ int block_item(int k) {
  const int blocks = static_cast<int>(gridDim.x), block = static_cast<int>(blockIdx.x);
  return k * blocks + (k % 2 == 0 ? block : blocks - 1 - block);
}

// A persistent block per SM: warpgroup 0 produces (its first warp copies K and V tiles of one item
// after another, the others leave), the two consumer warpgroups each compute 64 query rows of an
// item against every tile. The consumers take turns issuing their MMAs (FlashAttention-3's
// ping-pong), so one's softmax runs while the tensor cores work on the other's S and P x V. The
// producer runs ahead into the next item's K/V while the consumers finish an item, and each
// consumer loads its next Q while its last P x V runs and it stores O.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1)
    prefill_wgmma_kernel(const PrefillAttention::WorkItem* items, int32_t num_items, const T* q,
                         T* out, const PagedKvCache kv, int32_t num_q_heads, float softmax_scale,
                         const __grid_constant__ KvTensorMaps maps) {
  using Traits = tc::ElementTraits<T>;
  using WorkItem = PrefillAttention::WorkItem;
  extern __shared__ unsigned char smem_raw[];
  const Rings rings{reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSmemAlign - 1) & ~uintptr_t{kSmemAlign - 1})};

  const int group = num_q_heads / kv.num_kv_heads;
  const int tid = threadIdx.x;
  const int warpgroup = tid / kWarpgroupThreads;
  auto tiles_of = [](const WorkItem& item) {
    return (item.first_position + item.q_count + kKeys - 1) / kKeys;
  };

  if (tid == 0) {
    for (int tensor = 0; tensor < 2; ++tensor)
      for (int stage = 0; stage < kStages; ++stage) {
        ptx::mbarrier_init(rings.full(tensor, stage), 32);
        ptx::mbarrier_init(rings.empty(tensor, stage), kConsumerWarps);
      }
    ptx::mbarrier_init_fence();
  }
  __syncthreads();
  if (block_item(0) >= num_items) return;  // the launch gives no block fewer than one item

  if (warpgroup == 0) {
    ptx::set_max_registers<kProducerRegisters>();
    if (tid < 32) {
      int ring_base = 0;
      for (int k = 0; block_item(k) < num_items; ++k) {
        const WorkItem item = items[block_item(k)];
        const int num_tiles = tiles_of(item);
        produce_kv<T>(rings, item, kv, maps, item.first_position + item.q_count, num_tiles,
                      ring_base);
        ring_base += num_tiles;
      }
    }
    return;
  }
  ptx::set_max_registers<kConsumerRegisters>();
  const int consumer = warpgroup - 1, wg_tid = tid % kWarpgroupThreads;
  const int q_barrier = kQBarrier + consumer;

  // This consumer's 64 rows of Q: row r is token r / group of the item, query head
  // kv_head * group + r % group; rows past the item are zero queries, never stored.
  auto load_q = [&](const WorkItem& item) {
    const int rows_used = item.q_count * group;
    for (int i = wg_tid; i < kWarpgroupRows * kChunksPerRow; i += kWarpgroupThreads) {
      const int row = consumer * kWarpgroupRows + i / kChunksPerRow, chunk = i % kChunksPerRow;
      const int token = row / group;
      const bool valid = row < rows_used;
      const T* src = q +
                     (static_cast<int64_t>(item.q_row_begin + token) * num_q_heads +
                      item.kv_head * group + row - token * group) *
                         kHeadDim +
                     chunk * kChunkElements;
      ptx::cp_async_16(rings.q() + swizzled_offset(row, chunk, kQAtomBytes), valid ? src : q,
                       valid ? 16 : 0);
    }
    ptx::cp_async_commit();
  };

  // Turns: consumer 0 issues first; each hands the turn to the other after its issue.
  const int my_turn = kTurnBarrier + consumer, other_turn = kTurnBarrier + 1 - consumer;
  if (consumer == 1) ptx::named_barrier_arrive(kTurnBarrier, kConsumerThreads);
  auto begin_issue = [&] { ptx::named_barrier_sync(my_turn, kConsumerThreads); };
  auto end_issue = [&] { ptx::named_barrier_arrive(other_turn, kConsumerThreads); };

  // This thread's two rows of the warpgroup's 64 (the wgmma accumulator layout): r0 and r0 + 8.
  const int lane = tid % 32, quad = lane % 4;
  const int r0 = consumer * kWarpgroupRows + wg_tid / 32 * kWarpRows + lane / 4, r1 = r0 + 8;
  const float scale_log2 = softmax_scale * kLog2e;
  const unsigned char* q_rows = rings.q() + consumer * kWarpgroupRows * kAtomRowBytes;
  uint32_t p_frag[kKeys / kMmaK][4];  // P of the previous tile, the A operand of its P x V

  WorkItem item = items[block_item(0)];
  load_q(item);
  int ring_base = 0;  // ring slots of this block's earlier items, as the producer counts them
  for (int k = 0;; ++k) {
    const bool has_next = block_item(k + 1) < num_items;
    const WorkItem next = has_next ? items[block_item(k + 1)] : item;
    const int rows_used = item.q_count * group;
    const int kv_end = item.first_position + item.q_count;
    const int num_tiles = tiles_of(item);
    // Rows past the item attend to every key (their output is never stored).
    const int pos0 = r0 < rows_used ? item.first_position + r0 / group : kv_end - 1;
    const int pos1 = r1 < rows_used ? item.first_position + r1 / group : kv_end - 1;
    float o_acc[kAccumulators];
#pragma unroll
    for (int i = 0; i < kAccumulators; ++i) o_acc[i] = 0.f;
    float max0 = -INFINITY, max1 = -INFINITY, sum0 = 0.f, sum1 = 0.f;

    auto wait_full = [&](int tensor, int tile) {
      const int slot = ring_base + tile;
      ptx::mbarrier_wait(rings.full(tensor, slot % kStages), (slot / kStages) & 1);
    };
    auto release = [&](int tensor, int tile) {  // this warp's MMAs have read the stage
      if (lane == 0) ptx::mbarrier_arrive(rings.empty(tensor, (ring_base + tile) % kStages));
    };
    // S = Q K^T over head_dim in eight k16 slices, 32 bytes apart within an atom.
    auto issue_s = [&](float(&s_acc)[kAccumulators], int tile) {
      const unsigned char* k_tile = rings.tile(0, (ring_base + tile) % kStages);
#pragma unroll
      for (int ks = 0; ks < kHeadDim / kMmaK; ++ks) {
        constexpr int kSlicesPerAtom = kAtomRowBytes / (kMmaK * 2);
        const int atom = ks / kSlicesPerAtom, byte = (ks % kSlicesPerAtom) * kMmaK * 2;
        const uint64_t a = ptx::wgmma_descriptor_k_major_sw128(q_rows + atom * kQAtomBytes + byte);
        const uint64_t b = ptx::wgmma_descriptor_k_major_sw128(k_tile + atom * kKvAtomBytes + byte);
        ptx::wgmma_m64k16<kKeys, T>(s_acc, a, b, ks > 0 ? 1u : 0u);
      }
      ptx::wgmma_commit();
    };
    // O += P V over a tile's keys in eight k16 slices of 16 keys (2048 bytes apart).
    auto issue_pv = [&](int tile) {
      const unsigned char* v_tile = rings.tile(1, (ring_base + tile) % kStages);
#pragma unroll
      for (int kk = 0; kk < kKeys / kMmaK; ++kk)
        ptx::wgmma_m64n128k16_rs<T>(
            o_acc, p_frag[kk],
            ptx::wgmma_descriptor_mn_major_sw128(v_tile + kk * kMmaK * kAtomRowBytes, kKvAtomBytes),
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
      // A row's reference maximum moves only when the tile's maximum exceeds it by more than
      // kRescaleLog2 (in log2 units): below that the weights stay under 2^kRescaleLog2, far
      // below fp16's range and with P's relative precision unchanged, and O and the sum need
      // no rescaling.
      auto moved = [&](float old_max, float tile_max) {
        return tile_max > old_max &&
               (old_max == -INFINITY || (tile_max - old_max) * scale_log2 > kRescaleLog2);
      };
      const float new0 = moved(max0, tile_max0) ? tile_max0 : max0;
      const float new1 = moved(max1, tile_max1) ? tile_max1 : max1;
      // A row with every key so far masked keeps -inf: 0 in its place avoids (-inf) - (-inf).
      const float shift0 = new0 == -INFINITY ? 0.f : new0 * scale_log2;
      const float shift1 = new1 == -INFINITY ? 0.f : new1 * scale_log2;
      const float2 corr = {new0 == max0 ? 1.f : exp2_flushed(fmaf(max0, scale_log2, -shift0)),
                           new1 == max1 ? 1.f : exp2_flushed(fmaf(max1, scale_log2, -shift1))};
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
      sum0 = fmaf(sum0, corr.x, part0);
      sum1 = fmaf(sum1, corr.y, part1);
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

    // Q of this item in shared memory, for the warpgroup and the async proxy.
    ptx::cp_async_wait<0>();
    ptx::fence_proxy_async_shared();
    ptx::named_barrier_sync(q_barrier, kWarpgroupThreads);

    // Software pipeline: iteration t issues S_t = Q K_t^T with P_{t-1} V_{t-1}, so the softmax of
    // tile t overlaps the previous tile's P x V (and the other consumer's MMAs). The first tile
    // is peeled (no P x V before it): a branch around the P x V issue makes ptxas serialize the
    // wgmmas.
    {
      wait_full(0, 0);
      float s_acc[kAccumulators];
      begin_issue();
      ptx::wgmma_fence();
      issue_s(s_acc, 0);
      end_issue();
      ptx::wgmma_wait<0>();
      release(0, 0);
#pragma unroll
      for (int i = 0; i < kAccumulators; ++i) ptx::wgmma_fence_operand(s_acc[i]);
      softmax(s_acc, 0);  // O is still zero: nothing to rescale
      pack_p(s_acc);
    }
    for (int tile = 1; tile < num_tiles; ++tile) {
      wait_full(0, tile);
      wait_full(1, tile - 1);
      float s_acc[kAccumulators];
      begin_issue();
      ptx::wgmma_fence();
      issue_s(s_acc, tile);
      issue_pv(tile - 1);
      end_issue();
      ptx::wgmma_wait<1>();  // S_t is done; P_{t-1} V_{t-1} may still run
      release(0, tile);
#pragma unroll
      for (int i = 0; i < kAccumulators; ++i) ptx::wgmma_fence_operand(s_acc[i]);
      const float2 corr = softmax(s_acc, tile);
      ptx::wgmma_wait<0>();  // P_{t-1} V_{t-1} is done: O can be rescaled and P overwritten
      release(1, tile - 1);
#pragma unroll
      for (int i = 0; i < kAccumulators; ++i) ptx::wgmma_fence_operand(o_acc[i]);
      if (__any_sync(0xffffffffu, corr.x != 1.f || corr.y != 1.f)) {
#pragma unroll
        for (int j = 0; j < kColumnBlocks; ++j) {
          o_acc[4 * j] *= corr.x;
          o_acc[4 * j + 1] *= corr.x;
          o_acc[4 * j + 2] *= corr.y;
          o_acc[4 * j + 3] *= corr.y;
        }
      }
      pack_p(s_acc);
    }
    // Every warp of the warpgroup has waited for its last S, the last read of Q: the next item's
    // Q loads while the last P x V runs and O is stored.
    ptx::named_barrier_sync(q_barrier, kWarpgroupThreads);
    if (has_next) load_q(next);
    // The last tile's P x V. In the block's last item consumer 1 issues last: nobody waits for
    // its turn after it.
    wait_full(1, num_tiles - 1);
    begin_issue();
    ptx::wgmma_fence();
    issue_pv(num_tiles - 1);
    if (consumer == 0 || has_next) end_issue();
    ptx::wgmma_wait<0>();
    release(1, num_tiles - 1);
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
    if (!has_next) break;
    ring_base += num_tiles;
    item = next;
  }
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status{};
    L2KV_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                     cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || fn == nullptr)
      throw Error("prefill attention: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// The pools' tensor maps, encoded on the host at every launch so no cache has to follow pools
// that are freed and reallocated (its cost per launch is not measured yet; if it shows, the
// maps belong with the pools, made once when they are allocated).
KvTensorMaps kv_tensor_maps(const PagedKvCache& kv) {
  KvTensorMaps maps{};
  constexpr uint64_t kElementBytes = 2;
  const uint64_t head_dim = static_cast<uint64_t>(kv.head_dim);
  const uint64_t block_size = static_cast<uint64_t>(kv.block_size);
  const uint64_t heads = static_cast<uint64_t>(kv.num_kv_heads);
  const cuuint64_t dims[4] = {head_dim, block_size, heads, static_cast<cuuint64_t>(kv.num_blocks)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(kv.token_stride()) * kElementBytes,
                                 static_cast<cuuint64_t>(kv.head_stride()) * kElementBytes,
                                 static_cast<cuuint64_t>(kv.block_stride()) * kElementBytes};
  const cuuint32_t box[4] = {kAtomElements, static_cast<cuuint32_t>(block_size), 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  for (int tensor = 0; tensor < 2; ++tensor) {
    const CUresult r = tensor_map_encoder()(
        tensor == 0 ? &maps.k : &maps.v,
        kv.dtype == DType::kFloat16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                    : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
        4, const_cast<void*>(tensor == 0 ? kv.k_pool : kv.v_pool), dims, strides, box,
        element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
      throw Error("prefill attention: cuTensorMapEncodeTiled failed with " + std::to_string(r));
  }
  return maps;
}

template <typename T>
void launch(const PrefillAttention::WorkItem* items, int32_t num_items, const void* q, void* out,
            const PagedKvCache& kv, int32_t num_q_heads, float scale, int32_t max_blocks,
            cudaStream_t stream) {
  auto kernel = prefill_wgmma_kernel<T>;
  static PerDevice<bool> configured;  // the shared-memory limit is a per-device attribute
  configured.value([&](int) {
    L2KV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kSmemBytes)));
    return true;
  });
  // One block an SM (its shared memory allows no second), never more blocks than items.
  const int32_t blocks =
      std::min(num_items, max_blocks > 0 ? max_blocks : current_device_sm_count());
  kernel<<<blocks, kThreads, kSmemBytes, stream>>>(items, num_items, static_cast<const T*>(q),
                                                   static_cast<T*>(out), kv, num_q_heads, scale,
                                                   kv_tensor_maps(kv));
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
                          float softmax_scale, int32_t max_blocks, cudaStream_t stream) {
  if (!prefill_wgmma_supports(kv))
    throw Error("prefill attention: the wgmma kernel needs head_dim 128 and a 16-bit cache");
  if (kv.dtype == DType::kBFloat16)
    launch<__nv_bfloat16>(items, num_items, q, out, kv, num_q_heads, softmax_scale, max_blocks,
                          stream);
  else
    launch<__half>(items, num_items, q, out, kv, num_q_heads, softmax_scale, max_blocks, stream);
}

}  // namespace l2kv
