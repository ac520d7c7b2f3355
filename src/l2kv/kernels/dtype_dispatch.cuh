// From a runtime DType to the CUDA element type a templated launcher instantiates.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"

namespace l2kv {

// Calls f with a null pointer of the element type of a 16-bit `dtype` (__half or
// __nv_bfloat16); throws l2kv::Error for any other dtype.
template <typename F>
void with_16bit_type(DType dtype, F&& f) {
  if (dtype == DType::kFloat16)
    f(static_cast<__half*>(nullptr));
  else if (dtype == DType::kBFloat16)
    f(static_cast<__nv_bfloat16*>(nullptr));
  else
    throw Error("a 16-bit dtype (bf16 or fp16) is needed here, got " +
                std::string(dtype_name(dtype)));
}

}  // namespace l2kv
