// How the kernel benchmarks time a call: the median over repetitions, each between its own
// pair of events, optionally replayed from a CUDA graph.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "l2kv/core/cuda_check.h"

namespace l2kv::bench {

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median µs of `reps` calls of launch(rep) (or launch()), each preceded by before() (not timed)
// and between its own pair of events; nothing synchronizes the host between reps. With
// `in_graph` the whole loop is captured into one CUDA graph and replayed once, so the calls run
// back to back as in an engine's captured decode step, without the host launch path (~4 µs per
// event-timed launch on an H100).
template <typename Launch, typename Before>
double time_median_us(int reps, Launch&& launch, cudaStream_t stream, bool in_graph,
                      Before&& before) {
  std::vector<cudaEvent_t> events(2 * reps);
  for (auto& e : events) L2KV_CUDA_CHECK(cudaEventCreate(&e));
  const unsigned flags = in_graph ? cudaEventRecordExternal : 0;
  if (in_graph) L2KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int r = 0; r < reps; ++r) {
    before();
    L2KV_CUDA_CHECK(cudaEventRecordWithFlags(events[2 * r], stream, flags));
    if constexpr (std::is_invocable_v<Launch&, int>) {
      launch(r);
    } else {
      launch();
    }
    L2KV_CUDA_CHECK(cudaEventRecordWithFlags(events[2 * r + 1], stream, flags));
  }
  if (in_graph) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    L2KV_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    L2KV_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    L2KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<double> us(reps);
  for (int r = 0; r < reps; ++r) {
    float ms = 0;
    L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, events[2 * r], events[2 * r + 1]));
    us[r] = ms * 1e3;
  }
  for (auto& e : events) cudaEventDestroy(e);
  return median(us);
}

// time_median_us with nothing before each call.
template <typename Launch>
double time_median_us(int reps, Launch&& launch, cudaStream_t stream, bool in_graph = false) {
  return time_median_us(reps, launch, stream, in_graph, [] {});
}

}  // namespace l2kv::bench
