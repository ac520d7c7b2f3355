// The CPU model runner: CpuModel over a host KV pool in blocks, read and written through the
// engine's block tables, so CI runs the whole engine (and a wrong block table shows up as
// wrong tokens). Sequences of a step run one after another (batching buys nothing on the
// CPU); sampling is sample_on_cpu on the last row of each sequence that samples.
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

namespace l2kv {

class CpuRunner final : public ModelRunner {
 public:
  // Host memory prepare() may offer the pool at memory_utilization 1.
  static constexpr int64_t kHostKvBudgetBytes = int64_t{1} << 30;

  explicit CpuRunner(std::shared_ptr<const CpuModel> model);
  explicit CpuRunner(const std::filesystem::path& model_folder);

  const ModelConfig& config() const override { return model_->config(); }
  std::string device_name() const override { return "cpu"; }
  KvCacheSizing prepare(int32_t block_size, int32_t max_batched_tokens, int32_t max_seqs,
                        int32_t max_model_len, double memory_utilization) override;
  void allocate_kv_cache(int32_t num_blocks) override;
  std::vector<SampledToken> execute(const StepInput& step) override;
  bool supports_prompt_logprobs() const override { return true; }

  const CpuModel& model() const { return *model_; }

 private:
  std::shared_ptr<const CpuModel> model_;
  int32_t block_size_ = 0;
  std::optional<CpuKvPool> pool_;
};

}  // namespace l2kv
