// Reductions over a thread-block cluster (sm_90): each block's value, already reduced over the
// block and equal in every thread, is read by every block from the others' shared memory. All
// blocks add or compare in rank order, so every thread of the cluster gets the same bits. A
// block not launched in a cluster is a cluster of one and returns its own value.
#pragma once

#include <cooperative_groups.h>

namespace l2kv {

template <typename Combine>
__device__ __forceinline__ float cluster_reduce(float block_value, Combine combine) {
  namespace cg = cooperative_groups;
  __shared__ float slot;
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned blocks = cluster.num_blocks();
  if (blocks == 1) return block_value;
  if (threadIdx.x == 0) slot = block_value;
  cluster.sync();  // every block's slot written
  float result = *cluster.map_shared_rank(&slot, 0u);
  for (unsigned b = 1; b < blocks; ++b)
    result = combine(result, *cluster.map_shared_rank(&slot, b));
  cluster.sync();  // every slot read before any block moves on (and may exit or write it again)
  return result;
}

__device__ __forceinline__ float cluster_sum(float block_value) {
  return cluster_reduce(block_value, [](float a, float b) { return a + b; });
}

__device__ __forceinline__ float cluster_max(float block_value) {
  return cluster_reduce(block_value, [](float a, float b) { return fmaxf(a, b); });
}

}  // namespace l2kv
