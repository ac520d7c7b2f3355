// Dynamic per-token fp8 quantization of a projection's input rows, for products of fp8 inputs
// and fp8 weights on tensor cores (W8A8, as compressed-tensors' FP8-Dynamic checkpoints are
// meant to run): each row of x becomes E4M3 codes and one float32 scale, max|row| / 448, so
// the row's largest value lands on E4M3's largest finite one (x ~= scale * code).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"
#include "l2kv/core/host_device.h"

namespace l2kv {

// An fp8 product of codes still in float32, before its scales: element [r, o] is
// product[r, o] * row_scales[r] * col_scales[o] rounded to the model's dtype, as
// rescale_fp8_product() writes it. The op that reads it applies the scales itself, loading
// col_scales 8 at a time: one scale per column (per-channel weight scales; a per-tensor scale
// must be expanded first, as the loader does), 16-byte aligned.
struct Fp8Product {
  const float* product = nullptr;     // [rows, width], 16-byte aligned rows
  const float* row_scales = nullptr;  // [rows]
  const float* col_scales = nullptr;  // [width]
  L2KV_HOST_DEVICE explicit operator bool() const { return product != nullptr; }
};

// Where an op writes its output rows quantized as quantize_rows_fp8() would quantize the
// 16-bit values it also writes (codes [rows, width] 8-byte aligned, scales [rows]).
struct Fp8Rows {
  uint8_t* codes = nullptr;
  float* scales = nullptr;
  L2KV_HOST_DEVICE explicit operator bool() const { return codes != nullptr; }
};

// codes[r, k] = E4M3(x[r, k] / scales[r]) (round to nearest even, saturating), scales[r] =
// max_k |x[r, k]| / 448 (1 for a row of zeros), for x [rows, in] in `dtype` (bf16 or fp16). One
// launch on `stream` (graph-capturable); throws l2kv::Error before it unless rows >= 1, `in` a
// positive multiple of 8 and x 16-byte aligned.
void quantize_rows_fp8(DType dtype, const void* x, int64_t rows, int64_t in, uint8_t* codes,
                       float* scales, cudaStream_t stream);

// y[r, o] = product[r, o] * row_scales[r] * col_scales[o] in `dtype`: an fp8 product of codes
// (float32, [rows, out]) scaled back. One launch on `stream`.
void rescale_fp8_product(DType dtype, const float* product, const float* row_scales,
                         const float* col_scales, int64_t rows, int64_t out, void* y,
                         cudaStream_t stream);

}  // namespace l2kv
