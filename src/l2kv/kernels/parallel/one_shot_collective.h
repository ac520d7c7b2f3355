// One-shot collectives over peer memory for the small messages of tensor-parallel decode (one
// hidden-size row per sequence): every rank copies its data into a staging buffer of its own
// that the other ranks can read (CUDA peer access, or ranks sharing one device), tells each
// peer it is there with a flag in the peer's memory, waits for every peer's flag, then reads
// all ranks' staging directly. One kernel, one round of flags: a few microseconds where NCCL's
// ring takes 15-20 (bench/NOTES.md), and graph-safe (the call counters live on the device).
//
// Staging has two halves used by alternate calls, so a rank may start its next call while a
// slower peer still reads the last one: it cannot get two calls ahead, since every call waits
// for every peer. Each 16-byte vector of a message is always handled by the same block (the
// grid is fixed), so every block's flags and counters order its own vectors' reuse.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace l2kv::ops {

inline constexpr int32_t kCollectiveMaxRanks = 8;
inline constexpr int32_t kCollectiveBlocks = 24;
inline constexpr int32_t kCollectiveThreads = 512;

// One rank's flags, in its own device memory (zeroed when allocated): arrived[b][r] is the last
// call of rank r's block b that has its data staged; calls[b] counts this rank's calls of block b
// (64 bits: they never wrap).
struct CollectiveSignals {
  uint64_t arrived[kCollectiveBlocks][kCollectiveMaxRanks];
  uint64_t calls[kCollectiveBlocks];
};

// What one rank's kernel sees of the group.
struct CollectivePeers {
  int32_t rank = 0, size = 1;
  void* staging[kCollectiveMaxRanks] = {};               // each rank's two halves
  CollectiveSignals* signals[kCollectiveMaxRanks] = {};  // each rank's flags
  int64_t staging_half_bytes = 0;
  // Host-mapped flag: nonzero makes waiting kernels give up (their outputs are then garbage),
  // so a failed rank cannot leave the others spinning. May be null.
  const volatile int32_t* abort = nullptr;
};

enum class CollectiveType : uint8_t { kFloat16, kBFloat16, kFloat32 };
int32_t collective_type_bytes(CollectiveType type);

// out = the element-wise sum over ranks of `in` (`count` elements; summed in float32 in rank
// order, so every rank gets the same bits); out may be in. Every rank calls it with the same
// count. count x element bytes must be a multiple of 16, at most staging_half_bytes, and the
// pointers 16-byte aligned; throws l2kv::Error otherwise (before launching).
void one_shot_all_reduce(CollectiveType type, const void* in, void* out, int64_t count,
                         const CollectivePeers& peers, cudaStream_t stream);

// Rank 0's `out` gets every rank's `bytes` of `in`, rank after rank ([size][bytes]); the other
// ranks' `out` is not written (may be null). Same limits as one_shot_all_reduce.
void one_shot_gather_to_first(const void* in, void* out, int64_t bytes,
                              const CollectivePeers& peers, cudaStream_t stream);

}  // namespace l2kv::ops
