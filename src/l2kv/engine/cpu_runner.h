// The CPU model runner: CpuModel over a host KV pool in blocks, read and written through the
// engine's block tables, so CI runs the whole engine (and a wrong block table shows up as
// wrong tokens). Sequences of a step run one after another (batching buys nothing on the
// CPU); sampling is sample_on_cpu on the last row of each sequence that samples.
//
// Tensor parallelism (tensor_parallel.h): with N ranks the model is split over N CpuModels, one
// per thread, each with a pool of its own KV heads. The engine talks to rank 0 only; each step
// the other ranks run the same sequences (the collectives inside each forward keep them in
// lockstep) and rank 0 alone samples and computes prompt logprobs. A rank that throws aborts
// the group, so no rank waits forever; the runner is then unusable (device_fault() says why).
//
// Pool sizing: prepare() offers min(memory_utilization x 1 GiB, what max_seqs sequences of
// max_model_len tokens could ever fill, plus the null block); EngineConfig::num_kv_blocks
// overrides it. The pool is float32 and starts as NaN, so reading an unwritten slot shows.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "l2kv/engine/model_runner.h"
#include "l2kv/model/cpu_model.h"
#include "l2kv/parallel/local_communicator.h"

namespace l2kv {

class CpuRunner final : public ModelRunner {
 public:
  // Host memory prepare() may offer the pool at memory_utilization 1.
  static constexpr int64_t kHostKvBudgetBytes = int64_t{1} << 30;

  // A whole model (a tensor-parallel rank's is refused: its forwards need the other ranks).
  explicit CpuRunner(std::shared_ptr<const CpuModel> model);
  // `tensor_parallel_size` ranks (1: the whole model in this thread); throws l2kv::Error for a
  // split tp_shard() refuses.
  explicit CpuRunner(const std::filesystem::path& model_folder, int32_t tensor_parallel_size = 1);
  ~CpuRunner() override;

  // Sliding-window layers in KV cache groups of their own, whose blocks are freed as they leave
  // the window (on by default); off: one block table for every layer. Takes effect at prepare().
  void set_window_kv_groups(bool on) { window_kv_groups_ = on; }

  const ModelConfig& config() const override { return model_->config(); }
  std::string device_name() const override;
  KvCacheSizing prepare(int32_t block_size, int32_t max_batched_tokens, int32_t max_seqs,
                        int32_t max_model_len, double memory_utilization) override;
  void allocate_kv_cache(int32_t num_blocks) override;
  std::vector<SampledToken> execute(const StepInput& step) override;
  std::string device_fault() override;
  bool supports_prompt_logprobs() const override { return true; }

  // Rank 0's model: the whole model, or with tensor parallelism rank 0's part, whose forwards
  // are collectives (calling one outside execute() would wait for the other ranks forever).
  const CpuModel& model() const { return *model_; }
  int32_t tensor_parallel_size() const { return 1 + static_cast<int32_t>(ranks_.size()); }

 private:
  class Rank;  // a tensor-parallel rank other than 0: its model, pool and thread
  void validate(const StepInput& step);  // non-const: checks through a view of the pool

  std::shared_ptr<LocalGroup> group_;         // tensor parallelism only
  std::unique_ptr<LocalCommunicator> comm_;   // rank 0's
  std::shared_ptr<const CpuModel> model_;     // rank 0's (the whole model without TP)
  std::vector<std::unique_ptr<Rank>> ranks_;  // ranks 1 .. N - 1
  int32_t block_size_ = 0;
  bool window_kv_groups_ = true;
  KvCacheGroups kv_groups_;  // set by prepare
  std::optional<CpuKvPool> pool_;
};

}  // namespace l2kv
