// Tensor parallelism on CUDA: one rank per GPU, each a CudaRunner over its part of the model (a
// CudaModel made with a DeviceCommunicator) driven by a thread of its own. The engine talks to
// this runner as to any other; every call runs on all ranks at once, because their forwards
// (and the eager warm-ups before graph capture) meet in the collectives. Rank 0 alone samples.
//
// A step runs in two rounds: every rank stages it (validation and metadata upload, no
// collective), and only if all staged it do they run it. A step the runners refuse is thus
// refused by all before any rank waits for another, and the runner stays usable. A rank that
// fails after that aborts the group (DeviceGroup::abort: waiting kernels and NCCL calls return),
// so no rank waits forever; the runner is then unusable and device_fault() says why.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "l2kv/engine/cuda_runner.h"
#include "l2kv/engine/model_runner.h"
#include "l2kv/parallel/device_communicator.h"

namespace l2kv {

// Where each rank's part of the model comes from: a Hugging Face folder (each rank reads only
// its slices) or a synthetic shape with random weights.
struct TensorParallelModelSource {
  std::filesystem::path folder;
  std::optional<ModelConfig> synthetic;
  uint64_t seed = 1;
};

class TensorParallelCudaRunner final : public ModelRunner {
 public:
  // Rank r on devices[r]. `configure` runs on every rank's model before its runner is made
  // (GEMM tuning, fp8 paths). `group` may be given (tests: ranks sharing one device); by
  // default one is made over `devices`. Throws l2kv::Error if a rank cannot be made (its
  // message names the rank); every rank made so far is then freed.
  TensorParallelCudaRunner(std::vector<int> devices, const TensorParallelModelSource& source,
                           const CudaRunnerOptions& options,
                           const std::function<void(CudaModel&)>& configure = {},
                           std::shared_ptr<DeviceGroup> group = nullptr);
  ~TensorParallelCudaRunner() override;

  const ModelConfig& config() const override;
  std::string device_name() const override;
  KvCacheSizing prepare(int32_t block_size, int32_t max_batched_tokens, int32_t max_seqs,
                        int32_t max_model_len, double memory_utilization) override;
  void allocate_kv_cache(int32_t num_blocks) override;
  std::vector<SampledToken> execute(const StepInput& step) override;
  std::string device_fault() override;
  bool supports_prompt_logprobs() const override { return true; }

  // CudaRunner::set_decode_attention on every rank (graphs are recaptured: a collective).
  void set_decode_attention(DecodeKernel kernel, const PrefetchPolicy& policy);

  int32_t tensor_parallel_size() const { return static_cast<int32_t>(ranks_.size()); }
  // Rank r's runner and model, for tests and for benchmarks that read rank 0's profile and
  // bytes. Driving them directly (a forward, a graph capture) would wait for the other ranks.
  CudaRunner& rank_runner(int32_t r);
  std::shared_ptr<CudaModel> rank_model(int32_t r) const;

 private:
  class Rank;  // a rank's communicator, model, runner and thread
  // Runs f(rank) on every rank's thread at once and waits for all; rethrows the first error.
  // With `abort_on_error`, a rank's error aborts the group at once (the others may be waiting
  // for it in a collective).
  void on_every_rank(const std::function<void(int32_t)>& f, bool abort_on_error);
  void release_ranks() noexcept;  // frees every rank's state and stops the threads
  void capture_graphs();          // every rank's decode graphs, bucket by bucket

  std::shared_ptr<DeviceGroup> group_;
  std::vector<std::unique_ptr<Rank>> ranks_;
  std::vector<SampledToken> sampled_;  // rank 0's, of the step being run
};

}  // namespace l2kv
