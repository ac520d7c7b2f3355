// Structured outputs on the GPU: the rows of allowed tokens a grammar computed on the host are
// applied to the logits in place, before GpuSampler reads them (sampler.h's step -1). Only
// constrained rows are touched, so a step without them launches nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace l2kv {

// For each i < num_rows: logits[rows[i] * vocab + t] = -inf for every token t whose bit
// (t % 32 of word t / 32) is clear in masks[i * words ...], words = (vocab + 31) / 32. All
// pointers are device memory. Enqueued on `stream`; throws l2kv::Error on a bad launch.
void apply_token_bitmask(float* logits, int64_t vocab, const uint32_t* masks, const int32_t* rows,
                         int32_t num_rows, cudaStream_t stream);

}  // namespace l2kv
