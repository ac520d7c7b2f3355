// The interface between the engine and a backend. The engine decides what runs (the
// scheduler's step plan: for each sequence, which new tokens, where they sit, which KV blocks
// hold them); a runner owns all memory of its device (weights, KV pool, workspace, graphs),
// runs the model on those tokens, writes their K/V into the blocks it was given, and samples.
// CpuRunner and CudaRunner implement it; the engine cannot tell them apart.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "l2kv/model/model_config.h"
#include "l2kv/sampling/sampler.h"

namespace l2kv {

// One sequence's part of a step.
struct StepSequence {
  std::span<const int32_t> tokens;  // new tokens: a prompt chunk or the last sampled one
  int32_t start_position = 0;       // tokens already cached before them
  // Asynchronous steps (ModelRunner::launch): >= 0 when the last of `tokens` is not known yet
  // (its value there is meaningless): it is the token the previous launched step sampled in
  // this row (the index among that step's sampled sequences). -1: every token is known.
  int32_t pending_token_row = -1;
  // [KV cache group]: physical blocks covering start_position + size (a windowed group's
  // entries before its window may be the null block).
  std::vector<std::span<const int32_t>> block_tables;
  bool sample = false;   // the chunk ends the known tokens: sample the next one
  SamplingRow sampling;  // valid when sample
  // Structured outputs, when sample: writes the row's allowed-token mask (the layout of
  // SamplingRow::allowed_tokens, which stays empty here: this is a runner's only source of
  // masks). The runner calls it once per step, as late as it can: a GPU runner after launching
  // the forward, so the host's grammar work overlaps the GPU's.
  std::function<void(std::span<uint32_t>)> fill_allowed_tokens;
  // Prompt logprobs, only for a runner that supports_prompt_logprobs(): row
  // `prompt_logprobs_row + i` of the chunk predicts `prompt_logprob_targets[i]`; the runner
  // appends one PromptLogprob per target, with `prompt_logprobs` top tokens, to
  // `*prompt_logprobs_out`. None when the targets are empty.
  std::span<const int32_t> prompt_logprob_targets;
  int32_t prompt_logprobs_row = 0;
  int32_t prompt_logprobs = 0;
  std::vector<PromptLogprob>* prompt_logprobs_out = nullptr;
};

struct StepInput {
  std::vector<StepSequence> sequences;
};

// Sizing of the KV pool, asked of the runner before allocate_kv_cache().
struct KvCacheSizing {
  int64_t bytes_per_block = 0;  // K and V of all layers one block id holds
  int64_t bytes_available = 0;  // what the pool may use (device memory after weights,
                                // workspace and graphs, times the utilization; or host memory)
  // The pool's KV cache groups (l2kv/model/kv_cache_groups.h), by window: the engine's block
  // manager keeps a table per group for every sequence.
  std::vector<int32_t> group_windows = {0};
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual const ModelConfig& config() const = 0;
  // A short name for logs, e.g. "cpu" or "cuda:0 NVIDIA H100 80GB HBM3".
  virtual std::string device_name() const = 0;

  // Prepares everything that does not depend on the pool's size (workspace for
  // `max_batched_tokens` tokens and `max_seqs` sequences, graphs), then says how large a pool
  // fits. `memory_utilization` is the fraction of the device's total memory l2kv may hold.
  virtual KvCacheSizing prepare(int32_t block_size, int32_t max_batched_tokens, int32_t max_seqs,
                                int32_t max_model_len, double memory_utilization) = 0;
  // Allocates the pool: `num_blocks` blocks of `block_size` tokens in every layer.
  virtual void allocate_kv_cache(int32_t num_blocks) = 0;

  // Runs one step. Returns one sampled token per sequence with sample = true, in order.
  // Every block id in the tables is below num_blocks; the engine guarantees the tables cover
  // start_position + tokens.size() positions.
  virtual std::vector<SampledToken> execute(const StepInput& step) = 0;

  // A step in two halves, so the host plans step N + 1 while the device runs step N:
  // launch() starts a step and returns before its tokens exist; collect() waits for the oldest
  // launched step not yet collected and returns what execute() would have. The engine launches
  // at most two steps before collecting the older, and collects a step with masks
  // (fill_allowed_tokens) or prompt logprobs before it launches another. launch() reads its
  // StepInput before it returns; collect() gets the same object but may read only its prompt
  // logprob fields (the other spans, tokens and block tables, may have moved by then: the
  // engine plans the next step in between).
  // Sequences may name a token of the previous launched step (pending_token_row). The default
  // runs execute() inside launch(), with those tokens filled in on the host: correct for any
  // runner, overlapping nothing; a runner that overlaps overrides both.
  virtual void launch(const StepInput& step);
  virtual std::vector<SampledToken> collect(const StepInput& step);

  // Asked after execute() threw: why the device can run nothing more (a sticky CUDA error:
  // illegal address, device lost), or empty when the failure was the step's alone.
  virtual std::string device_fault() { return {}; }

  // Whether execute() fills StepSequence's prompt logprobs (the engine refuses requests for
  // them otherwise).
  virtual bool supports_prompt_logprobs() const { return false; }

 private:
  // The default launch()'s results, oldest first, until collected.
  std::deque<std::vector<SampledToken>> launched_results_;
};

}  // namespace l2kv
