// Copying 64-token tiles of one KV head from the paged cache into shared memory, shared by the
// split-decode and prefill attention kernels: 16-byte cp.async copies into a swizzled
// [64][head_dim] layout that ldmatrix reads without bank conflicts.
#pragma once

#include <cstdint>

#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/fp8.cuh"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

inline constexpr int32_t kKvTileTokens = 64;

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled [64][D] tile: the chunk
// index is XORed with row % 8 so the 8 rows an ldmatrix reads hit 8 different bank groups.
template <int kHeadDim>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * kHeadDim + ((chunk ^ (row & 7)) << 3);
}

// Byte offset of 16-byte chunk `chunk` of row `row` in a [64][kHeadDim] byte tile (an fp8
// cache's), swizzled so the 8 rows an ldmatrix reads lie in 8 different bank groups: rows of
// 128 bytes or more XOR the chunk with row % 8; 64-byte rows, two to a 128-byte line, with
// (row / 2) % 4.
template <int kHeadDim>
__device__ __forceinline__ int swizzled_bytes(int row, int chunk) {
  static_assert(kHeadDim == 64 || kHeadDim == 128 || kHeadDim == 256);
  const int pattern = kHeadDim >= 128 ? (row & 7) : ((row >> 1) & 3);
  return row * kHeadDim + ((chunk ^ pattern) << 4);
}

// Copies tokens [tile_begin, tile_begin + 64) of (sequence `seq`, `kv_head`) into `k_tile` and
// `v_tile` as stored (T: the 16-bit dtype, or uint8_t for an fp8 cache, whose tiles are half the
// bytes and swizzled by swizzled_bytes); rows at or past `token_end` are zero-filled. Each of
// the kThreads threads owns one 16-byte column chunk of consecutive rows: those rows lie in one
// KV block (block sizes are multiples of it), so one block-table lookup serves them all.
template <typename T, int kHeadDim, int kThreads>
__device__ __forceinline__ void load_kv_tile(const PagedKvCache& kv, int32_t seq, int32_t kv_head,
                                             int tile_begin, int token_end, T* k_tile, T* v_tile,
                                             int block_shift, bool evict_first,
                                             uint64_t load_policy) {
  constexpr bool kBytes = sizeof(T) == 1;
  constexpr int kChunkElems = 16 / static_cast<int>(sizeof(T));
  constexpr int kChunksPerRow = kHeadDim / kChunkElems;
  constexpr int kRowsPerThread = kKvTileTokens * kChunksPerRow / kThreads;
  static_assert(sizeof(T) == 1 || sizeof(T) == 2);
  static_assert(kThreads % kChunksPerRow == 0 && kRowsPerThread >= 1 && kRowsPerThread <= 16,
                "a thread's rows must fit in the smallest KV block (16 tokens)");
  const int32_t* table = kv.block_table + static_cast<int64_t>(seq) * kv.max_blocks_per_seq;
  const T* k_pool = static_cast<const T*>(kv.k_pool);
  const T* v_pool = static_cast<const T*>(kv.v_pool);
  const int chunk = threadIdx.x % kChunksPerRow;
  const int first_row = threadIdx.x / kChunksPerRow * kRowsPerThread;
  const int first_token = tile_begin + first_row;
  int64_t offset = 0;
  if (first_token < token_end) {
    const int32_t physical = __ldg(table + (first_token >> block_shift));
    offset = kv.offset(physical, first_token & (kv.block_size - 1), kv_head) + chunk * kChunkElems;
  }
  const int64_t row_stride = kv.token_stride();
#pragma unroll
  for (int r = 0; r < kRowsPerThread; ++r) {
    const bool valid = first_token + r < token_end;
    const int64_t src = valid ? offset + r * row_stride : 0;  // masked rows read nothing
    const uint32_t bytes = valid ? 16 : 0;
    const int dst = kBytes ? swizzled_bytes<kHeadDim>(first_row + r, chunk)
                           : swizzled<kHeadDim>(first_row + r, chunk);
    if (evict_first && valid) {
      ptx::cp_async_16_hinted(k_tile + dst, k_pool + src, load_policy);
      ptx::cp_async_16_hinted(v_tile + dst, v_pool + src, load_policy);
    } else {
      ptx::cp_async_16(k_tile + dst, k_pool + src, bytes);
      ptx::cp_async_16(v_tile + dst, v_pool + src, bytes);
    }
  }
}

// Widens rows [first_row, first_row + num_rows) of a byte tile from load_kv_tile into rows
// 0.. of a swizzled 16-bit tile (first_row a multiple of 8, so the swizzle matches), spread
// over `num_threads` threads of which this is `thread`.
template <typename T, int kHeadDim>
__device__ __forceinline__ void widen_fp8_rows(const uint8_t* bytes, T* tile, int first_row,
                                               int num_rows, int thread, int num_threads) {
  constexpr int kChunksPerRow = kHeadDim / 16;  // 16 bytes in, two 16-byte chunks out
  for (int i = thread; i < num_rows * kChunksPerRow; i += num_threads) {
    const int row = i / kChunksPerRow, chunk = i % kChunksPerRow;
    const uint4 raw =
        *reinterpret_cast<const uint4*>(bytes + swizzled_bytes<kHeadDim>(first_row + row, chunk));
    uint4 low, high;
    fp8::widen16<T>(raw, low, high);
    *reinterpret_cast<uint4*>(tile + swizzled<kHeadDim>(row, 2 * chunk)) = low;
    *reinterpret_cast<uint4*>(tile + swizzled<kHeadDim>(row, 2 * chunk + 1)) = high;
  }
}

}  // namespace l2kv
