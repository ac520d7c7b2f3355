// l2kv_bench_all_reduce: the all-reduce of tensor-parallel decode (rows x hidden 16-bit values
// after the O and down projections) through l2kv's one-shot kernel and through NCCL, each as
// a CUDA graph of back-to-back calls replayed on every rank at once (as a decode step's graph
// holds them). Reports the time per call on the slowest rank. One rank per GPU by default;
// --shared-gpu N puts N ranks on cuda:0 (one-shot only: a check of the path, not a latency).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_info.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/random_fill.h"
#include "l2kv/parallel/device_communicator.h"

namespace l2kv::bench {
namespace {

struct Options {
  int ranks = 0;       // 0: every GPU
  int shared_gpu = 0;  // N ranks on cuda:0 instead
  std::vector<int64_t> rows{1, 2, 4, 8, 16, 32, 64};
  int64_t hidden = 4096;
  int calls_per_graph = 20;
  int reps = 50;
  std::string json_path;
};

// Microseconds per call of `path` for `count` bf16 values on every rank (the slowest rank's),
// or a negative value when the path cannot carry it.
double time_path(const std::shared_ptr<DeviceGroup>& group, CollectivePath path, int64_t count,
                 const Options& o) {
  const int32_t n = group->size();
  std::vector<double> us(static_cast<size_t>(n), 0);
  std::vector<std::string> errors(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < n; ++r)
    threads.emplace_back([&, r] {
      try {
        DeviceCommunicator comm(group, r);
        cudaStream_t stream = nullptr;
        L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        void* data = nullptr;
        L2KV_CUDA_CHECK(cudaMalloc(&data, static_cast<size_t>(count) * 2));
        fill_random(static_cast<uint16_t*>(data), count, DType::kBFloat16, 0.01f, 7 + r, stream);
        auto enqueue = [&] {
          comm.all_reduce_sum(ops::CollectiveType::kBFloat16, data, count, stream, path);
        };
        enqueue();  // NCCL sets up its channels at the first call
        L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        L2KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        for (int i = 0; i < o.calls_per_graph; ++i) enqueue();
        L2KV_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        L2KV_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        for (int i = 0; i < 3; ++i) L2KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        cudaEvent_t start = nullptr, stop = nullptr;
        L2KV_CUDA_CHECK(cudaEventCreate(&start));
        L2KV_CUDA_CHECK(cudaEventCreate(&stop));
        L2KV_CUDA_CHECK(cudaEventRecord(start, stream));
        for (int i = 0; i < o.reps; ++i) L2KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        L2KV_CUDA_CHECK(cudaEventRecord(stop, stream));
        L2KV_CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        us[static_cast<size_t>(r)] = 1e3 * ms / (o.reps * o.calls_per_graph);
        cudaEventDestroy(start), cudaEventDestroy(stop);
        cudaGraphExecDestroy(exec), cudaGraphDestroy(graph);
        cudaFree(data);
        cudaStreamDestroy(stream);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
        group->abort(e.what());
      }
    });
  for (auto& t : threads) t.join();
  for (const std::string& e : errors)
    if (!e.empty()) {
      std::fprintf(stderr, "  %s: %s\n", path == CollectivePath::kNccl ? "nccl" : "one-shot",
                   e.c_str());
      return -1;
    }
  return *std::max_element(us.begin(), us.end());
}

int run(const Options& o) {
  if (!cuda_device_available()) throw Error("needs a CUDA GPU; none is available here");
  int count = 0;
  L2KV_CUDA_CHECK(cudaGetDeviceCount(&count));
  std::vector<int> devices;
  if (o.shared_gpu > 0) {
    devices.assign(static_cast<size_t>(o.shared_gpu), 0);
  } else {
    const int n = o.ranks > 0 ? o.ranks : count;
    if (n < 2 || n > count)
      throw Error("l2kv_bench_all_reduce: " + std::to_string(n) + " ranks on " +
                  std::to_string(count) + " GPUs (give --ranks 2.." + std::to_string(count) +
                  ", or --shared-gpu N on one GPU)");
    for (int d = 0; d < n; ++d) devices.push_back(d);
  }
  const DeviceInfo info = query_device_info(0);
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d", std::gmtime(&now));
  nlohmann::ordered_json report = {{"card", info.name},
                                   {"date", date},
                                   {"ranks", devices.size()},
                                   {"shared_gpu", o.shared_gpu > 0},
                                   {"hidden", o.hidden},
                                   {"dtype", "bf16"},
                                   {"calls_per_graph", o.calls_per_graph},
                                   {"points", nlohmann::ordered_json::array()}};
  std::printf("%s x %zu%s, bf16 rows of %lld, us per all-reduce in a CUDA graph\n",
              info.name.c_str(), devices.size(), o.shared_gpu > 0 ? " (ranks sharing cuda:0)" : "",
              static_cast<long long>(o.hidden));
  std::printf("%6s %10s %10s %10s\n", "rows", "KiB", "one-shot", "nccl");
  // A fresh group per point: a path that fails aborts its group.
  for (const int64_t rows : o.rows) {
    const int64_t values = rows * o.hidden;
    const int64_t shared_staging = o.shared_gpu > 0 ? values * 2 : 0;
    const double one_shot = time_path(std::make_shared<DeviceGroup>(devices, shared_staging),
                                      CollectivePath::kOneShot, values, o);
    const double nccl = o.shared_gpu > 0 ? -1
                                         : time_path(std::make_shared<DeviceGroup>(devices),
                                                     CollectivePath::kNccl, values, o);
    std::printf("%6lld %10.1f %10.2f %10.2f\n", static_cast<long long>(rows), values * 2 / 1024.0,
                one_shot, nccl);
    report["points"].push_back({{"rows", rows},
                                {"bytes", values * 2},
                                {"one_shot_us", one_shot >= 0 ? nlohmann::json(one_shot) : nullptr},
                                {"nccl_us", nccl >= 0 ? nlohmann::json(nccl) : nullptr}});
  }
  if (!o.json_path.empty()) std::ofstream(o.json_path) << report.dump(1) << "\n";
  return 0;
}

}  // namespace
}  // namespace l2kv::bench

int main(int argc, char** argv) {
  l2kv::bench::Options o;
  CLI::App app{
      "l2kv_bench_all_reduce: tensor-parallel decode's all-reduce, l2kv's one-shot kernel "
      "against NCCL, inside CUDA graphs"};
  app.add_option("--ranks", o.ranks, "Ranks, one per GPU from cuda:0 (0: every GPU)");
  app.add_option("--shared-gpu", o.shared_gpu,
                 "Put this many ranks on cuda:0 instead (one-shot only; checks the path, its "
                 "times are not a latency)");
  app.add_option("--rows", o.rows, "Rows of --hidden values per all-reduce")->capture_default_str();
  app.add_option("--hidden", o.hidden, "Values per row")->capture_default_str();
  app.add_option("--calls-per-graph", o.calls_per_graph, "Back-to-back calls in the graph")
      ->capture_default_str();
  app.add_option("--reps", o.reps, "Timed graph replays")->capture_default_str();
  app.add_option("--json", o.json_path, "Write the results here as JSON");
  CLI11_PARSE(app, argc, argv);
  try {
    return l2kv::bench::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "l2kv_bench_all_reduce: %s\n", e.what());
    return 1;
  }
}
