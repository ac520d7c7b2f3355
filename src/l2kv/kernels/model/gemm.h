// Dense projections through cuBLAS: y[rows, out] = x[rows, in] * W[out, in]^T with 16-bit
// operands (bf16 or fp16) and fp32 accumulation on tensor cores.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"

namespace l2kv {

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y in `dtype`, like x and w.
  void linear(DType dtype, const void* x, const void* w, void* y, int64_t rows, int64_t in,
              int64_t out, cudaStream_t stream) const;
  // y in float32 (the LM head's logits).
  void linear_f32_out(DType dtype, const void* x, const void* w, float* y, int64_t rows, int64_t in,
                      int64_t out, cudaStream_t stream) const;

 private:
  cublasHandle_t handle_ = nullptr;
};

}  // namespace l2kv
