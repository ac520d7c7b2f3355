#include <cmath>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/sampling/token_bitmask.h"

namespace l2kv {
namespace {

constexpr int kThreads = 256;  // one thread per token
constexpr int kBitsPerWord = 32;

// Grid (token blocks, rows): each thread owns one token's logit and writes -inf there when its
// bit is clear; a warp's 32 threads share one mask word and write 32 adjacent logits, so the
// writes coalesce (a thread per word wrote 32 scattered floats: 8 M stores a 64-row step).
// Allowed tokens are never written.
__global__ void apply_token_bitmask_kernel(float* logits, int64_t vocab, const uint32_t* masks,
                                           const int32_t* rows) {
  const int64_t words = (vocab + kBitsPerWord - 1) / kBitsPerWord;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (token >= vocab) return;
  const uint32_t bits = masks[static_cast<int64_t>(blockIdx.y) * words + token / kBitsPerWord];
  if (((bits >> (token % kBitsPerWord)) & 1u) == 0)
    logits[static_cast<int64_t>(rows[blockIdx.y]) * vocab + token] = -INFINITY;
}

}  // namespace

void apply_token_bitmask(float* logits, int64_t vocab, const uint32_t* masks, const int32_t* rows,
                         int32_t num_rows, cudaStream_t stream) {
  if (num_rows == 0) return;
  if (vocab < 1 || num_rows < 0 || num_rows > kMaxGridDimY)  // a row per blockIdx.y
    throw Error("apply_token_bitmask: vocab " + std::to_string(vocab) + " and " +
                std::to_string(num_rows) + " rows are out of range");
  const dim3 grid(static_cast<unsigned>((vocab + kThreads - 1) / kThreads),
                  static_cast<unsigned>(num_rows));
  apply_token_bitmask_kernel<<<grid, kThreads, 0, stream>>>(logits, vocab, masks, rows);
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv
