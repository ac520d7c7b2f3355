#include "l2kv/core/device_info.h"

#include <cuda_runtime_api.h>

#include "l2kv/core/cuda_check.h"

namespace l2kv {

DeviceInfo query_device_info(int device) {
  cudaDeviceProp prop{};
  L2KV_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  DeviceInfo info;
  info.name = prop.name;
  info.device = device;
  info.sm_count = prop.multiProcessorCount;
  info.compute_major = prop.major;
  info.compute_minor = prop.minor;
  info.l2_bytes = prop.l2CacheSize;
  info.global_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  info.max_shared_memory_per_block_optin = static_cast<int>(prop.sharedMemPerBlockOptin);
  return info;
}

}  // namespace l2kv
