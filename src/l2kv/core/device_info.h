// Facts about the GPU read at run time; kernels and planners size themselves from these.
#pragma once

#include <cstdint>
#include <string>

namespace l2kv {

struct DeviceInfo {
  std::string name;
  int device = 0;
  int sm_count = 0;
  int compute_major = 0;
  int compute_minor = 0;
  int64_t l2_bytes = 0;
  int64_t global_memory_bytes = 0;
  int max_shared_memory_per_block_optin = 0;
};

// Reads the properties of `device` (throws l2kv::Error when it cannot).
DeviceInfo query_device_info(int device);

}  // namespace l2kv
