// Device helpers of the decode-attention benchmark: random fill, L2 flush, and the
// streaming-read kernel that measures the bandwidth ceiling in the same run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"

namespace l2kv::bench {

// Fills `count` 16-bit elements with values uniform in [-scale, scale), from a hash of
// (seed, index): fast for tens of GiB, never zeros.
void fill_random(void* data, int64_t count, DType dtype, float scale, uint64_t seed,
                 cudaStream_t stream);

// Reads `bytes` (a multiple of 64) with 16-byte loads, several in flight per thread, the
// way a well-fed memory-bound kernel would; writes one word per thread so nothing is elided.
void launch_streaming_read(const void* data, int64_t bytes, uint32_t* sink, int sm_count,
                           cudaStream_t stream);

// An empty kernel: its event-timed cost is the launch floor of a µs-scale kernel.
void launch_empty(cudaStream_t stream);

}  // namespace l2kv::bench
