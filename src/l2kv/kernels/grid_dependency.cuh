// Programmatic dependent launch (sm_90): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start before the kernel ahead of it in
// the stream has finished. It must call grid_dependency_wait() before it reads anything that
// kernel writes; the kernel ahead calls launch_dependents() to let it start early. Both are
// no-ops when the launch did not ask for programmatic serialization.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace l2kv::ptx {

// Blocks until every grid this one depends on has completed and its writes are visible.
__device__ __forceinline__ void grid_dependency_wait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}

// Lets the next kernel in the stream, if launched with programmatic serialization, start now.
__device__ __forceinline__ void launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

}  // namespace l2kv::ptx

namespace l2kv {

// CUDA's largest gridDim.y (and .z): kernels that put rows or sequences there launch in slices
// of this many, or refuse more.
inline constexpr int32_t kMaxGridDimY = 65535;

// The launch side: a cudaLaunchKernelEx configuration that asks for programmatic stream
// serialization when `pdl`. The configuration points at `attribute`, which must outlive the
// launch call.
inline cudaLaunchConfig_t launch_config(dim3 grid, dim3 block, size_t shared_bytes,
                                        cudaStream_t stream, bool pdl,
                                        cudaLaunchAttribute& attribute) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  attribute = {};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  if (pdl) {
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  return config;
}

// The same for a grid of clusters of `cluster_blocks` blocks along x (1: no clusters). The
// configuration points at `attributes`, which must outlive the launch call.
inline cudaLaunchConfig_t launch_config(dim3 grid, dim3 block, size_t shared_bytes,
                                        cudaStream_t stream, bool pdl, unsigned cluster_blocks,
                                        cudaLaunchAttribute (&attributes)[2]) {
  cudaLaunchConfig_t config = launch_config(grid, block, shared_bytes, stream, pdl, attributes[0]);
  config.attrs = attributes;
  config.numAttrs = pdl ? 1 : 0;
  if (cluster_blocks > 1) {
    cudaLaunchAttribute& cluster = attributes[config.numAttrs++];
    cluster = {};
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = cluster_blocks;
    cluster.val.clusterDim.y = cluster.val.clusterDim.z = 1;
  }
  return config;
}

}  // namespace l2kv
