#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bench_kernels.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/kernels/cache_hints.cuh"

namespace l2kv::bench {
namespace {

constexpr int kReadThreads = 256;
constexpr int kReadUnroll = 4;  // independent 16-byte loads in flight per thread

__global__ void __launch_bounds__(kReadThreads)
    streaming_read_kernel(const uint4* data, int64_t n, uint32_t* sink) {
  uint32_t acc = 0;
  const int64_t stride = int64_t{gridDim.x} * blockDim.x;
  int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  for (; i + (kReadUnroll - 1) * stride < n; i += kReadUnroll * stride) {
    uint4 v[kReadUnroll];
#pragma unroll
    for (int u = 0; u < kReadUnroll; ++u) v[u] = __ldcs(data + i + u * stride);
#pragma unroll
    for (int u = 0; u < kReadUnroll; ++u) acc ^= v[u].x ^ v[u].y ^ v[u].z ^ v[u].w;
  }
  for (; i < n; i += stride) {
    const uint4 v = __ldcs(data + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  sink[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

__global__ void empty_kernel() {}

// One block per (sequence, KV block); thread h < num_kv_heads prefetches head h's K and V of
// that block (HND: contiguous) if the block holds tokens before the sequence's newest.
__global__ void prefetch_kv_kernel(const PagedKvCache kv) {
  const int seq = blockIdx.x / kv.max_blocks_per_seq;
  const int block = blockIdx.x % kv.max_blocks_per_seq;
  const int head = threadIdx.x;
  const int older_tokens = kv.seq_lens[seq] - 1;
  const int first = block * kv.block_size;
  if (head >= kv.num_kv_heads || first >= older_tokens) return;
  const int tokens = min(kv.block_size, older_tokens - first);
  const int32_t physical =
      kv.block_table[static_cast<int64_t>(seq) * kv.max_blocks_per_seq + block];
  const int64_t offset = kv.offset(physical, 0, head) * kv.element_bytes();
  const uint32_t bytes = static_cast<uint32_t>(tokens * kv.head_dim * kv.element_bytes());
  const uint64_t policy = ptx::make_l2_policy(L2EvictionHint::kEvictLast);
  ptx::bulk_prefetch_l2(static_cast<const char*>(kv.k_pool) + offset, bytes, policy);
  ptx::bulk_prefetch_l2(static_cast<const char*>(kv.v_pool) + offset, bytes, policy);
}

}  // namespace

void launch_streaming_read(const void* data, int64_t bytes, uint32_t* sink, int sm_count,
                           cudaStream_t stream) {
  const int blocks = sm_count * 8;  // 2048 threads per SM: enough loads in flight for HBM
  streaming_read_kernel<<<blocks, kReadThreads, 0, stream>>>(static_cast<const uint4*>(data),
                                                             bytes / 16, sink);
  L2KV_CUDA_CHECK_LAUNCH();
}

void launch_prefetch_kv_l2(const PagedKvCache& kv, cudaStream_t stream) {
  if (kv.layout != KvLayout::kHND) throw Error("prefetch_kv_l2: HND layout only");
  prefetch_kv_kernel<<<kv.batch_size * kv.max_blocks_per_seq, 32, 0, stream>>>(kv);
  L2KV_CUDA_CHECK_LAUNCH();
}

void launch_empty(cudaStream_t stream) {
  empty_kernel<<<1, 32, 0, stream>>>();
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv::bench
