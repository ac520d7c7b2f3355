// Set-up that must happen once per CUDA device, not once per process: kernel attributes such
// as the dynamic shared-memory limit belong to a device's context, so a second GPU (tensor
// parallelism) needs them set again.
#pragma once

#include <cuda_runtime_api.h>

#include <map>
#include <mutex>

#include "l2kv/core/cuda_check.h"

namespace l2kv {

// Keep one per call site (a function-local static): value() runs `configure` the first time it
// is called on each device and returns that device's result ever after. Thread-safe.
template <typename T>
class PerDevice {
 public:
  template <typename Configure>
  T value(Configure&& configure) {
    int device = 0;
    L2KV_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(mutex_);
    const auto it = values_.find(device);
    if (it != values_.end()) return it->second;
    T result = configure(device);
    values_.emplace(device, result);
    return result;
  }

 private:
  std::mutex mutex_;
  std::map<int, T> values_;
};

// The current device's multiprocessor count, asked once per device.
inline int current_device_sm_count() {
  static PerDevice<int> counts;
  return counts.value([](int device) {
    int sms = 0;
    L2KV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    return sms;
  });
}

}  // namespace l2kv
