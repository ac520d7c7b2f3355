// Seeded random fill of 16-bit device arrays: synthetic model weights and benchmark inputs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"

namespace l2kv {

// Fills `count` elements with values uniform in [-scale, scale) from a hash of (seed, index):
// fast for tens of GiB, reproducible, never zeros.
void fill_random(void* data, int64_t count, DType dtype, float scale, uint64_t seed,
                 cudaStream_t stream);

// The same for fp8 E4M3 bytes (an fp8 KV cache): values uniform in [-scale, scale), finite.
void fill_random_fp8_e4m3(void* data, int64_t count, float scale, uint64_t seed,
                          cudaStream_t stream);

}  // namespace l2kv
