// A device allocation of n elements, freed on destruction (move-only). The one owning device
// buffer of the engine, its benchmarks and tests.
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
  explicit DeviceArray(size_t n = 0) : size_(n) {
    if (n) L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T)));
  }
  DeviceArray(DeviceArray&& o) noexcept
      : ptr(std::exchange(o.ptr, nullptr)), size_(std::exchange(o.size_, 0)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(size_, o.size_);
    return *this;
  }
  ~DeviceArray() {
    if (ptr) cudaFree(ptr);
  }
  size_t size() const { return size_; }  // elements

 private:
  size_t size_ = 0;
};

}  // namespace l2kv
