// A device allocation of n elements, freed on destruction (move-only).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "l2kv/core/cuda_check.h"

namespace l2kv {

template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  // Allocates `n` elements on the current device (none for 0).
  explicit DeviceArray(size_t n = 0) {
    if (n) L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T)));
  }
  DeviceArray(DeviceArray&& o) noexcept : ptr(std::exchange(o.ptr, nullptr)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr, o.ptr);
    return *this;
  }
  ~DeviceArray() {
    if (ptr) cudaFree(ptr);
  }
};

}  // namespace l2kv
