#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "l2kv/core/cuda_check.h"

int main(int argc, char** argv) {
  // Before CUDA starts. Tensor-parallel tests put several ranks on one GPU, each spinning in its
  // collectives until the others arrive: a kernel loaded lazily on first launch, or a stream
  // sharing a hardware queue with a spinning one, could then wait for it forever.
  setenv("CUDA_MODULE_LOADING", "EAGER", 0);
  setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32", 0);
  testing::InitGoogleTest(&argc, argv);
  if (!l2kv::cuda_device_available())
    std::printf("l2kv tests: no CUDA GPU found; GPU tests will be skipped, CPU tests run.\n");
  return RUN_ALL_TESTS();
}
