// Weight-streaming skinny GEMM for decode: y[rows, out] = x[rows, in] * W[out, in]^T with
// rows = 1..16, 16-bit operands (bf16 or fp16), fp32 accumulation on tensor cores. At these
// row counts a projection is a read of W and nothing else, so the kernel is built to keep the
// HBM busy: each thread has several 16-byte weight loads in flight, each weight byte is read
// once, the activations come from L1/L2. Gemm::linear routes small row counts here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"

namespace l2kv {

// The largest `rows` the kernel takes (two 8-column tensor-core tiles).
inline constexpr int64_t kGemvMaxRows = 16;

// True when gemv() can run this problem: 1 <= rows <= kGemvMaxRows, `in` a positive multiple
// of 8 (a row is read in 16-byte vectors), out >= 1, and x and w 16-byte aligned.
bool gemv_supports(int64_t rows, int64_t in, int64_t out, const void* x, const void* w);

// y[rows, out] = x[rows, in] * w[out, in]^T, both row-major in `dtype`; y in float32 when
// `f32_out`, else in `dtype` (rounded to nearest). Launches one kernel on `stream`: no
// allocation, no host synchronization (CUDA-graph capturable). Throws l2kv::Error before any
// launch when gemv_supports() is false. With `pdl` the kernel is launched with programmatic
// dependent launch: its blocks start while the kernel ahead (which writes x) finishes, and wait
// for that kernel before they read x or write y.
void gemv(DType dtype, const void* x, const void* w, void* y, bool f32_out, int64_t rows,
          int64_t in, int64_t out, cudaStream_t stream, bool pdl = false);

}  // namespace l2kv
