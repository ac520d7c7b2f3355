#include <gtest/gtest.h>

#include <cstdio>

#include "l2kv/core/cuda_check.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  if (!l2kv::cuda_device_available())
    std::printf("l2kv tests: no CUDA GPU found; GPU tests will be skipped, CPU tests run.\n");
  return RUN_ALL_TESTS();
}
