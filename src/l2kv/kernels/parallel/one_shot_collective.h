// One-shot collectives over peer memory for the small messages of tensor-parallel decode (one
// hidden-size row per sequence): every rank copies its data into a staging buffer of its own
// that the other ranks can read (CUDA peer access, or ranks sharing one device), tells each
// peer it is there with a flag in the peer's memory, waits for every peer's flag, then reads
// all ranks' staging directly. One kernel, one round of flags: a few microseconds where NCCL's
// ring takes 15-20 (bench/NOTES.md), and graph-safe (the call counters live on the device).
//
// Staging has two halves used by alternate calls, so a rank may start its next call while a
// slower peer still reads the last one, but not the call after: that starts only once this
// rank's next kernel has met every peer in all its blocks, which (stream order) is after the
// peer's kernel reading the half has finished. This needs every collective launched without
// programmatic stream serialization, and every kernel launched with it between two
// collectives to wait (griddepcontrol.wait) before it ends: so it is in l2kv's kernels. Within a
// call, block b reads only what the peers' blocks b staged (blocks own strided vectors, or whole
// rows in the fused norm); the grid is fixed, so every block counts the same calls and picks the
// same half.
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
  // Some ranks of the group share a device: the fused norm then lets no projection start early
  // (its blocks would hold SMs a peer needs to reach the collective this rank waits in).
  bool shared_device = false;
};

enum class CollectiveType : uint8_t { kFloat16, kBFloat16, kFloat32 };
int32_t collective_type_bytes(CollectiveType type);

// out = the element-wise sum over ranks of `in` (`count` elements; summed in float32 in rank
// order, so every rank gets the same bits); out may be in. Every rank calls it with the same
// count. count x element bytes must be a multiple of 16, at most staging_half_bytes, and the
// pointers 16-byte aligned; throws l2kv::Error otherwise (before launching).
void one_shot_all_reduce(CollectiveType type, const void* in, void* out, int64_t count,
                         const CollectivePeers& peers, cudaStream_t stream);

// The all-reduce of a block's output fused with the norm after it (tensor-parallel decode):
// residual [rows, hidden] (fp32) += the sum over ranks of `partial` [rows, hidden] (16-bit,
// summed in float32 in rank order and rounded to the type, what one_shot_all_reduce leaves),
// then out = RMSNorm(residual) * weight (ops::add_rmsnorm's formula; its sum of squares in
// another order). One kernel where the plain path takes two; each block owns whole rows. Every
// rank calls it with the same rows; hidden % 8 == 0, rows x hidden x 2 bytes within the
// staging, buffers 16-byte aligned; throws l2kv::Error otherwise (before launching).
void one_shot_all_reduce_add_rmsnorm(CollectiveType type, const void* partial, float* residual,
                                     const void* weight, float eps, int32_t rows, int32_t hidden,
                                     void* out, const CollectivePeers& peers, cudaStream_t stream);

// Rank 0's `out` gets every rank's `bytes` of `in`, rank after rank ([size][bytes]); the other
// ranks' `out` is not written (may be null). Same limits as one_shot_all_reduce.
void one_shot_gather_to_first(const void* in, void* out, int64_t bytes,
                              const CollectivePeers& peers, cudaStream_t stream);

}  // namespace l2kv::ops
