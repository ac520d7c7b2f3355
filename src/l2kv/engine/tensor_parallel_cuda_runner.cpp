#include "l2kv/engine/tensor_parallel_cuda_runner.h"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_info.h"
#include "l2kv/core/error.h"

namespace l2kv {

// A rank's communicator, model and runner, and the thread that makes, drives and frees them
// (each rank's CUDA work on its own device, from one thread).
class TensorParallelCudaRunner::Rank {
 public:
  explicit Rank(int device) : device_(device), thread_([this] { loop(); }) {}
  ~Rank() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

  void start(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = std::move(task);
      has_task_ = true;
      done_ = false;
      error_ = nullptr;
    }
    wake_.notify_all();
  }
  // Waits for the task start() gave; returns its exception, if it threw.
  std::exception_ptr wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [&] { return done_; });
    return error_;
  }

  std::unique_ptr<DeviceCommunicator> comm;
  std::shared_ptr<CudaModel> model;
  std::unique_ptr<CudaRunner> runner;

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || has_task_; });
        if (!has_task_) return;
        task = std::move(task_);
        has_task_ = false;
      }
      std::exception_ptr error;
      try {
        L2KV_CUDA_CHECK(cudaSetDevice(device_));
        task();
      } catch (...) {
        error = std::current_exception();
      }
      {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = error;
        done_ = true;
      }
      finished_.notify_all();
    }
  }

  int device_;
  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  std::function<void()> task_;
  bool has_task_ = false, done_ = true, stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts once the members above exist
};

TensorParallelCudaRunner::TensorParallelCudaRunner(std::vector<int> devices,
                                                   const TensorParallelModelSource& source,
                                                   const CudaRunnerOptions& options,
                                                   const std::function<void(CudaModel&)>& configure,
                                                   std::shared_ptr<DeviceGroup> group)
    : group_(group ? std::move(group) : std::make_shared<DeviceGroup>(devices)) {
  if (group_->size() != static_cast<int32_t>(devices.size()))
    throw Error("TensorParallelCudaRunner: a group of " + std::to_string(group_->size()) +
                " ranks for " + std::to_string(devices.size()) + " devices");
  for (int device : devices) ranks_.push_back(std::make_unique<Rank>(device));
  try {
    on_every_rank(
        [&](int32_t r) {
          Rank& rank = *ranks_[static_cast<size_t>(r)];
          rank.comm = std::make_unique<DeviceCommunicator>(group_, r);
          rank.model = source.synthetic
                           ? std::make_shared<CudaModel>(*source.synthetic, source.seed, *rank.comm)
                           : std::make_shared<CudaModel>(source.folder, *rank.comm);
          if (configure) configure(*rank.model);
          rank.runner = std::make_unique<CudaRunner>(rank.model, options);
        },
        /*abort_on_error=*/true);  // the communicators wait for each other
  } catch (...) {
    release_ranks();
    throw;
  }
}

TensorParallelCudaRunner::~TensorParallelCudaRunner() {
  release_ranks();
}

void TensorParallelCudaRunner::release_ranks() noexcept {
  // Each rank frees its runner, model and communicator on its own thread and device.
  try {
    on_every_rank(
        [&](int32_t r) {
          Rank& rank = *ranks_[static_cast<size_t>(r)];
          cudaDeviceSynchronize();
          rank.runner.reset();
          rank.model.reset();
          rank.comm.reset();
        },
        /*abort_on_error=*/false);
  } catch (...) {  // a destructor reports nothing; the threads still stop below
  }
  ranks_.clear();
}

void TensorParallelCudaRunner::on_every_rank(const std::function<void(int32_t)>& f,
                                             bool abort_on_error) {
  for (size_t r = 0; r < ranks_.size(); ++r)
    ranks_[r]->start([this, &f, r, abort_on_error] {
      try {
        f(static_cast<int32_t>(r));
      } catch (...) {
        if (abort_on_error)
          group_->abort("rank " + std::to_string(r) + ": " + describe_current_exception());
        throw;
      }
    });
  std::exception_ptr first;
  for (auto& rank : ranks_)
    if (std::exception_ptr e = rank->wait(); e && !first) first = e;
  if (!first) return;
  // The rank that failed first, not those its abort stopped.
  if (const std::string why = group_->abort_reason(); !why.empty())
    throw Error("tensor-parallel ranks stopped: " + why);
  std::rethrow_exception(first);
}

CudaRunner& TensorParallelCudaRunner::rank_runner(int32_t r) {
  return *ranks_.at(static_cast<size_t>(r))->runner;
}

std::shared_ptr<CudaModel> TensorParallelCudaRunner::rank_model(int32_t r) const {
  return ranks_.at(static_cast<size_t>(r))->model;
}

const ModelConfig& TensorParallelCudaRunner::config() const {
  return ranks_.front()->model->whole_config();
}

std::string TensorParallelCudaRunner::device_name() const {
  std::string devices;
  for (int32_t r = 0; r < group_->size(); ++r)
    devices.append(r ? "," : "").append(std::to_string(group_->device(r)));
  return "cuda:" + devices + " " + query_device_info(group_->device(0)).name +
         " (tensor parallel over " + std::to_string(group_->size()) + " ranks)";
}

KvCacheSizing TensorParallelCudaRunner::prepare(int32_t block_size, int32_t max_batched_tokens,
                                                int32_t max_seqs, int32_t max_model_len,
                                                double memory_utilization) {
  std::vector<KvCacheSizing> sizes(ranks_.size());
  on_every_rank(
      [&](int32_t r) {
        sizes[static_cast<size_t>(r)] = rank_runner(r).prepare(
            block_size, max_batched_tokens, max_seqs, max_model_len, memory_utilization);
      },
      /*abort_on_error=*/false);
  // Every rank holds every block (its KV heads' share of it): the tightest rank decides.
  int64_t blocks = std::numeric_limits<int64_t>::max();
  for (const KvCacheSizing& s : sizes) {
    if (s.bytes_per_block <= 0) throw Error("tensor parallelism: a rank's KV block has no bytes");
    blocks = std::min(blocks, s.bytes_available / s.bytes_per_block);
  }
  KvCacheSizing sizing = sizes.front();
  sizing.bytes_available = blocks * sizing.bytes_per_block;
  return sizing;
}

void TensorParallelCudaRunner::allocate_kv_cache(int32_t num_blocks) {
  // Every rank allocates before any captures (capture runs each bucket once: a collective).
  on_every_rank([&](int32_t r) { rank_runner(r).allocate_kv_cache_without_graphs(num_blocks); },
                /*abort_on_error=*/false);
  capture_graphs();
}

void TensorParallelCudaRunner::set_decode_attention(DecodeKernel kernel,
                                                    const PrefetchPolicy& policy) {
  on_every_rank(
      [&](int32_t r) { rank_runner(r).set_decode_attention_without_graphs(kernel, policy); },
      /*abort_on_error=*/false);
  capture_graphs();
}

void TensorParallelCudaRunner::capture_graphs() {
  // One bucket a round: a rank's graph instantiation waits for its device's running kernels,
  // and with ranks sharing a GPU those may be a peer's warm-up collective of the next bucket.
  for (const int32_t bucket : rank_runner(0).graph_buckets())
    on_every_rank([&](int32_t r) { rank_runner(r).capture_graph(bucket); },
                  /*abort_on_error=*/true);
}

std::vector<SampledToken> TensorParallelCudaRunner::execute(const StepInput& step) {
  if (const std::string why = group_->abort_reason(); !why.empty())
    throw Error("tensor-parallel ranks stopped earlier: " + why);
  on_every_rank([&](int32_t r) { rank_runner(r).stage(step); }, /*abort_on_error=*/false);
  sampled_.clear();
  on_every_rank(
      [&](int32_t r) {
        std::vector<SampledToken> tokens = rank_runner(r).run_staged(step);
        if (r == 0) sampled_ = std::move(tokens);
      },
      /*abort_on_error=*/true);
  return std::move(sampled_);
}

std::string TensorParallelCudaRunner::device_fault() {
  if (const std::string why = group_->abort_reason(); !why.empty())
    return "tensor-parallel ranks stopped: " + why;
  for (int32_t r = 0; r < tensor_parallel_size(); ++r)
    if (std::string fault = rank_runner(r).device_fault(); !fault.empty())
      return "rank " + std::to_string(r) + ": " + fault;
  return {};
}

}  // namespace l2kv
