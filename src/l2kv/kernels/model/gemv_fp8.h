// Decode projection with fp8 weights: y[rows, out] = x[rows, in] * (scale * W[out, in])^T with W
// in E4M3 (one byte per weight: half the bytes a 16-bit step streams), x and y 16-bit (bf16 or
// fp16), fp32 accumulation on tensor cores. The weight scale is per output channel or one per
// tensor (compressed-tensors' and fbgemm's fp8 checkpoints). Built as gemv.h's kernel: each
// weight byte read once by a 16-byte streaming load, widened to 16 bits in registers (every
// E4M3 value is exact in fp16 and bf16), the scale applied to the fp32 sum.
//
// Up to kGemvMaxRows rows one block covers all rows; above, row groups of 16 run in adjacent
// blocks over the same weights, so W comes from HBM once and from L2 for the others.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"

namespace l2kv {

// The largest `rows` gemv_fp8() takes (larger batches dequantize and use cuBLASLt).
inline constexpr int64_t kGemvFp8MaxRows = 128;

struct Fp8Weights {
  const uint8_t* data = nullptr;  // [out, in] E4M3, 16-byte aligned
  const float* scale = nullptr;   // [out] per channel, or [1] per tensor
  bool per_channel = false;
};

// True when gemv_fp8() can run this problem: 1 <= rows <= kGemvFp8MaxRows, `in` a positive
// multiple of 16, out >= 1, x and the weights 16-byte aligned, a scale given.
bool gemv_fp8_supports(int64_t rows, int64_t in, int64_t out, const void* x, const Fp8Weights& w);

// y[m, n] = round(scale[n] * sum_k x[m, k] * W[n, k]) in `dtype` (x's and y's type). One kernel
// launch on `stream`, no allocation (graph-capturable); throws l2kv::Error before any launch
// when gemv_fp8_supports() is false. `pdl` as gemv()'s (gemv.h).
void gemv_fp8(DType dtype, const void* x, const Fp8Weights& w, void* y, int64_t rows, int64_t in,
              int64_t out, cudaStream_t stream, bool pdl = false);

// out[n, k] = round(scale[n] * W[n, k]) in `dtype`: the weights widened for a cuBLASLt product
// (prompts and batches past kGemvFp8MaxRows). One launch on `stream`.
void dequantize_fp8(DType dtype, const Fp8Weights& w, int64_t out, int64_t in, void* dst,
                    cudaStream_t stream);

}  // namespace l2kv
