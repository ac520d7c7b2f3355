// Device helpers of the decode-attention benchmark: the streaming-read kernel that measures the
// bandwidth ceiling in the same run (also used to leave the L2 clean after a flush).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv::bench {

// Reads `bytes` (a multiple of 64) with 16-byte loads, several in flight per thread, the
// way a well-fed memory-bound kernel would; writes one word per thread so nothing is elided.
void launch_streaming_read(const void* data, int64_t bytes, uint32_t* sink, int sm_count,
                           cudaStream_t stream);

// Prefetches into L2 (evict_last) the K and V of every token before each sequence's newest:
// the step benchmark's experiment of fetching layer L+1's KV during layer L's MLP. HND only.
void launch_prefetch_kv_l2(const PagedKvCache& kv, cudaStream_t stream);

// An empty kernel: its event-timed cost is the launch floor of a µs-scale kernel.
void launch_empty(cudaStream_t stream);

}  // namespace l2kv::bench
