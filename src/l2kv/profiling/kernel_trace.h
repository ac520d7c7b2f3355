// Records the kernels the GPU runs (graph replays included) through CUPTI's activity API.
// libcupti is loaded at run time, so l2kv starts where CUPTI is not installed; only a trace
// asked for there fails, with an error that says how to find it (L2KV_CUPTI_PATH).
#pragma once

#include <memory>
#include <vector>

#include "l2kv/profiling/step_profile.h"

namespace l2kv {

class KernelTrace {
 public:
  // Loads CUPTI and enables kernel records. Enable before capturing the graphs to be traced.
  // Throws l2kv::Error if CUPTI cannot be loaded or enabled. One trace per process.
  KernelTrace();
  ~KernelTrace();
  KernelTrace(const KernelTrace&) = delete;
  KernelTrace& operator=(const KernelTrace&) = delete;

  // Drops every record so far (call after cudaDeviceSynchronize and before the work to trace).
  void clear();
  // The kernels recorded since clear(); synchronize the device first.
  std::vector<KernelInterval> collect();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace l2kv
