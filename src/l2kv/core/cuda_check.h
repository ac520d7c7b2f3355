// Checking of CUDA runtime calls and kernel launches.
#pragma once

#include <cuda_runtime_api.h>

#include "l2kv/core/error.h"

namespace l2kv {

// Throws l2kv::Error naming the call and location when `status` is not cudaSuccess.
void cuda_check(cudaError_t status, const char* call, const char* file, int line);

// True when at least one CUDA device is usable from this process.
bool cuda_device_available();

}  // namespace l2kv

#define L2KV_CUDA_CHECK(call) ::l2kv::cuda_check((call), #call, __FILE__, __LINE__)
// After a <<<>>> launch: reports configuration errors of that launch.
#define L2KV_CUDA_CHECK_LAUNCH() \
  ::l2kv::cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
