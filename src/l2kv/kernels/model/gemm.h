// Dense projections through cuBLAS: y[rows, out] = x[rows, in] * W[out, in]^T, bf16 operands
// and output, fp32 accumulation (tensor cores).
#pragma once

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace l2kv {

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void linear(const __nv_bfloat16* x, const __nv_bfloat16* w, __nv_bfloat16* y, int64_t rows, int64_t in,
              int64_t out, cudaStream_t stream) const;
  // Same with float32 output (the LM head's logits).
  void linear_f32_out(const __nv_bfloat16* x, const __nv_bfloat16* w, float* y, int64_t rows, int64_t in, int64_t out,
                      cudaStream_t stream) const;

 private:
  cublasHandle_t handle_ = nullptr;
};

}  // namespace l2kv
