#include "l2kv/engine/cpu_runner.h"

#include <algorithm>

#include "l2kv/core/error.h"

namespace l2kv {

CpuRunner::CpuRunner(std::shared_ptr<const CpuModel> model) : model_(std::move(model)) {
  if (!model_) throw Error("CpuRunner: no model");
}

CpuRunner::CpuRunner(const std::filesystem::path& model_folder)
    : CpuRunner(std::make_shared<const CpuModel>(model_folder)) {}

KvCacheSizing CpuRunner::prepare(int32_t block_size, int32_t /*max_batched_tokens*/,
                                 int32_t max_seqs, int32_t max_model_len,
                                 double memory_utilization) {
  if (block_size < 1) throw Error("CpuRunner: block size must be at least 1");
  block_size_ = block_size;
  KvCacheSizing sizing;
  sizing.bytes_per_block = CpuKvPool::bytes_per_block(config(), block_size);
  const int64_t budget =
      static_cast<int64_t>(memory_utilization * static_cast<double>(kHostKvBudgetBytes));
  // More blocks than every sequence at full length (plus the null block) would never be used.
  const int64_t blocks_per_seq = (int64_t{max_model_len} + block_size - 1) / block_size;
  const int64_t useful = (int64_t{max_seqs} * blocks_per_seq + 1) * sizing.bytes_per_block;
  sizing.bytes_available = std::min(budget, useful);
  return sizing;
}

void CpuRunner::allocate_kv_cache(int32_t num_blocks) {
  if (block_size_ < 1) throw Error("CpuRunner: allocate_kv_cache before prepare");
  pool_.reset();
  pool_.emplace(config(), num_blocks, block_size_);
}

std::vector<SampledToken> CpuRunner::execute(const StepInput& step) {
  if (!pool_) throw Error("CpuRunner: execute before allocate_kv_cache");
  const int64_t vocab = config().vocab_size;
  std::vector<float> last_rows;
  std::vector<SamplingRow> rows;
  std::vector<std::vector<uint32_t>> masks;  // filled masks, one per constrained row
  masks.reserve(step.sequences.size());
  for (const StepSequence& seq : step.sequences) {
    CpuPagedKvView kv(*pool_, seq.block_table);
    const std::vector<float> logits = model_->extend(kv, seq.start_position, seq.tokens);
    for (size_t i = 0; i < seq.prompt_logprob_targets.size(); ++i) {
      const size_t row = static_cast<size_t>(seq.prompt_logprobs_row) + i;
      if (row >= seq.tokens.size() || !seq.prompt_logprobs_out)
        throw Error("CpuRunner: prompt logprobs past the chunk");
      seq.prompt_logprobs_out->push_back(
          prompt_logprob_on_cpu(std::span<const float>(logits).subspan(
                                    row * static_cast<size_t>(vocab), static_cast<size_t>(vocab)),
                                seq.prompt_logprob_targets[i], seq.prompt_logprobs));
    }
    if (!seq.sample) continue;
    last_rows.insert(last_rows.end(), logits.end() - vocab, logits.end());
    if (!seq.sampling.allowed_tokens.empty())
      throw Error("CpuRunner: masks come through StepSequence::fill_allowed_tokens");
    rows.push_back(seq.sampling);
    if (seq.fill_allowed_tokens) {
      masks.emplace_back(static_cast<size_t>((vocab + 31) / 32));
      seq.fill_allowed_tokens(masks.back());
      rows.back().allowed_tokens = masks.back();
    }
  }
  if (rows.empty()) return {};
  return sample_on_cpu(last_rows, vocab, rows);
}

}  // namespace l2kv
