// Decode projections of 17 to 64 rows on tensor cores, with K split between thread blocks:
// y[rows, out] = x[rows, in] * W[out, in]^T, 16-bit operands, fp32 sums, y in the operands'
// type or in float32.
//
// At these row counts the single-pass GEMV (gemv.h) re-reads x from L2 once per 16 output
// features: 4x W's bytes at 64 rows. Here a block owns 64 features, and the four warps of one
// K group read the same x vectors at the same time (one L2 read, the others from L1), so x
// costs about rows / 64 of W's bytes. 64 features per block leave too few blocks for a
// 4096-wide projection, so blocks also split K (grid = feature blocks x splits, at most two
// blocks per SM); each split writes its fp32 tile to a workspace, and the last block of a
// feature block to finish sums the splits in split order (deterministic) and stores y.
// Workspace and counters are allocated by the constructor: run() allocates nothing and is
// CUDA-graph capturable. One object per stream (calls on two streams would share them).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"

namespace l2kv {

class SplitKGemv {
 public:
  static constexpr int64_t kMaxRows = 64;
  static constexpr int64_t kMaxOut = 8192;
  static constexpr int kMaxSplits = 8;

  SplitKGemv();  // on the current device
  ~SplitKGemv();
  SplitKGemv(const SplitKGemv&) = delete;
  SplitKGemv& operator=(const SplitKGemv&) = delete;

  // 1 <= rows <= kMaxRows, `in` a positive multiple of 8, 1 <= out <= kMaxOut, x and w
  // 16-byte aligned.
  static bool supports(int64_t rows, int64_t in, int64_t out, const void* x, const void* w);

  // The K splits run() uses: as many as keep the grid within two blocks per SM (`sms`), each
  // split at least one iteration per warp group, at most kMaxSplits.
  static int splits_for(int64_t in, int64_t out, int sms);

  // Launches one kernel on `stream` (with programmatic dependent launch when `pdl`: W is
  // requested before the wait for the kernel ahead, x read and y written after it). Throws
  // l2kv::Error before any launch when supports() is false.
  void run(DType dtype, const void* x, const void* w, void* y, bool f32_out, int64_t rows,
           int64_t in, int64_t out, cudaStream_t stream, bool pdl);

 private:
  float* partials_ = nullptr;  // kMaxSplits x kMaxRows x kMaxOut
  int* counters_ = nullptr;    // finished splits per feature block, back at 0 after each call
  int sms_ = 0;
};

}  // namespace l2kv
