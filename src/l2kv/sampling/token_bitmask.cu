#include <cmath>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/sampling/token_bitmask.h"

namespace l2kv {
namespace {

constexpr int kThreads = 256;  // one thread per 32-token mask word
constexpr int kBitsPerWord = 32;

// Grid (word blocks, rows): each thread reads one mask word and writes -inf over the logits
// of its cleared bits; allowed tokens are never written.
__global__ void apply_token_bitmask_kernel(float* logits, int64_t vocab, const uint32_t* masks,
                                           const int32_t* rows) {
  const int64_t words = (vocab + kBitsPerWord - 1) / kBitsPerWord;
  const int64_t word = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (word >= words) return;
  const uint32_t bits = masks[static_cast<int64_t>(blockIdx.y) * words + word];
  if (bits == 0xFFFFFFFFu) return;
  float* row = logits + static_cast<int64_t>(rows[blockIdx.y]) * vocab;
  const int64_t first = word * kBitsPerWord;
  const int n = static_cast<int>(min(static_cast<int64_t>(kBitsPerWord), vocab - first));
  for (int b = 0; b < n; ++b)
    if (((bits >> b) & 1u) == 0) row[first + b] = -INFINITY;
}

}  // namespace

void apply_token_bitmask(float* logits, int64_t vocab, const uint32_t* masks, const int32_t* rows,
                         int32_t num_rows, cudaStream_t stream) {
  if (num_rows == 0) return;
  if (vocab < 1 || num_rows < 0 || num_rows > 65535)
    throw Error("apply_token_bitmask: vocab " + std::to_string(vocab) + " and " +
                std::to_string(num_rows) + " rows are out of range");
  const int64_t words = (vocab + kBitsPerWord - 1) / kBitsPerWord;
  const dim3 grid(static_cast<unsigned>((words + kThreads - 1) / kThreads),
                  static_cast<unsigned>(num_rows));
  apply_token_bitmask_kernel<<<grid, kThreads, 0, stream>>>(logits, vocab, masks, rows);
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv
