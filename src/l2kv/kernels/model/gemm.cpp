#include "l2kv/kernels/model/gemm.h"

#include <string>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLAS ") + what + " failed with status " + std::to_string(s));
}

cudaDataType_t cuda_type(DType t) {
  return t == DType::kFloat16 ? CUDA_R_16F : CUDA_R_16BF;
}

// Row-major y[rows, out] = x W^T is column-major y^T (out x rows) = W (out x in) * x^T, with W
// stored column-major as W^T (in x out): op(A) = T.
void gemm(cublasHandle_t h, DType dtype, const void* x, const void* w, void* y,
          cudaDataType_t y_type, int64_t rows, int64_t in, int64_t out, cudaStream_t stream) {
  check(cublasSetStream(h, stream), "set stream");
  const float alpha = 1.f, beta = 0.f;
  check(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(rows),
                     static_cast<int>(in), &alpha, w, cuda_type(dtype), static_cast<int>(in), x,
                     cuda_type(dtype), static_cast<int>(in), &beta, y, y_type,
                     static_cast<int>(out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "GemmEx");
}

}  // namespace

Gemm::Gemm() {
  check(cublasCreate(&handle_), "create");
}
Gemm::~Gemm() {
  if (handle_) cublasDestroy(handle_);
}

void Gemm::linear(DType dtype, const void* x, const void* w, void* y, int64_t rows, int64_t in,
                  int64_t out, cudaStream_t stream) const {
  gemm(handle_, dtype, x, w, y, cuda_type(dtype), rows, in, out, stream);
}

void Gemm::linear_f32_out(DType dtype, const void* x, const void* w, float* y, int64_t rows,
                          int64_t in, int64_t out, cudaStream_t stream) const {
  gemm(handle_, dtype, x, w, y, CUDA_R_32F, rows, in, out, stream);
}

}  // namespace l2kv
