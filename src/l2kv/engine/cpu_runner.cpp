#include "l2kv/engine/cpu_runner.h"

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "l2kv/core/error.h"

namespace l2kv {

namespace {

// The first row of a chunk whose logits the step reads (prompt logprobs' rows, the sampled last
// one); the chunk's size when none. Every rank computes the same, so their LM heads agree.
int64_t first_logit_row(const StepSequence& seq) {
  int64_t first = static_cast<int64_t>(seq.tokens.size());
  if (seq.sample) first = first - 1;
  if (!seq.prompt_logprob_targets.empty())
    first = std::min<int64_t>(first, seq.prompt_logprobs_row);
  return first;
}

}  // namespace

// One of ranks 1 .. N - 1: waits for a step, runs it, reports back. Its forwards meet rank 0's
// in the collectives, so a step ends on every rank together (or the group is aborted).
class CpuRunner::Rank {
 public:
  Rank(const std::filesystem::path& folder, std::shared_ptr<LocalGroup> group, int32_t rank)
      : group_(std::move(group)), comm_(group_, rank), model_(folder, comm_) {
    thread_ = std::thread([this] { loop(); });
  }
  ~Rank() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void allocate(int32_t num_blocks, int32_t block_size, const KvCacheGroups& groups) {
    pool_.reset();
    pool_.emplace(model_.config(), num_blocks, block_size, model_.kv_heads(), groups);
  }
  void start(const StepInput& step) {
    {
      std::lock_guard lock(mutex_);
      step_ = &step;
      done_ = false;
    }
    wake_.notify_all();
  }
  void wait() {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [&] { return done_; });
  }

 private:
  void loop() {
    for (;;) {
      const StepInput* step = nullptr;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || step_ != nullptr; });
        if (stop_) return;
        step = step_;
      }
      try {
        for (const StepSequence& seq : step->sequences) {  // the logits are rank 0's to use
          CpuPagedKvView kv(*pool_, seq.block_tables);
          model_.extend(kv, seq.start_position, seq.tokens, first_logit_row(seq));
        }
      } catch (...) {
        group_->abort("rank " + std::to_string(comm_.rank()) + ": " + describe_current_exception());
      }
      {
        std::lock_guard lock(mutex_);
        step_ = nullptr;
        done_ = true;
      }
      wake_.notify_all();
    }
  }

  std::shared_ptr<LocalGroup> group_;
  LocalCommunicator comm_;
  CpuModel model_;
  std::optional<CpuKvPool> pool_;
  std::mutex mutex_;
  std::condition_variable wake_;
  const StepInput* step_ = nullptr;
  bool done_ = true, stop_ = false;
  std::thread thread_;
};

CpuRunner::CpuRunner(std::shared_ptr<const CpuModel> model) : model_(std::move(model)) {
  if (!model_) throw Error("CpuRunner: no model");
  if (model_->tensor_parallel())
    throw Error("CpuRunner: a tensor-parallel rank's model runs only in CpuRunner(folder, N)");
}

CpuRunner::CpuRunner(const std::filesystem::path& model_folder, int32_t tensor_parallel_size) {
  if (tensor_parallel_size == 1) {
    model_ = std::make_shared<const CpuModel>(model_folder);
    return;
  }
  group_ = std::make_shared<LocalGroup>(tensor_parallel_size);
  comm_ = std::make_unique<LocalCommunicator>(group_, 0);
  // Rank 0 first: a split the model does not have is refused before anything is read.
  model_ = std::make_shared<const CpuModel>(model_folder, *comm_);
  for (int32_t r = 1; r < tensor_parallel_size; ++r)
    ranks_.push_back(std::make_unique<Rank>(model_folder, group_, r));
}

CpuRunner::~CpuRunner() = default;

std::string CpuRunner::device_name() const {
  const int32_t n = tensor_parallel_size();
  return n == 1 ? "cpu" : "cpu (tensor parallel over " + std::to_string(n) + " threads)";
}

KvCacheSizing CpuRunner::prepare(int32_t block_size, int32_t /*max_batched_tokens*/,
                                 int32_t max_seqs, int32_t max_model_len,
                                 double memory_utilization) {
  if (block_size < 1) throw Error("CpuRunner: block size must be at least 1");
  block_size_ = block_size;
  kv_groups_ =
      window_kv_groups_ ? windowed_kv_cache_groups(config()) : single_kv_cache_group(config());
  KvCacheSizing sizing;
  sizing.group_windows = kv_groups_.windows;
  // Every rank's pool: a block costs each rank its own KV heads' share.
  sizing.bytes_per_block = CpuKvPool::bytes_per_block(config(), block_size, kv_groups_) *
                           tensor_parallel_size() * model_->kv_heads() / config().num_kv_heads;
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
  pool_.emplace(config(), num_blocks, block_size_, model_->kv_heads(), kv_groups_);
  for (auto& rank : ranks_) rank->allocate(num_blocks, block_size_, kv_groups_);
}

std::string CpuRunner::device_fault() {
  return group_ ? group_->abort_reason() : std::string();
}

// What the forward and the sampling below would refuse, refused before any rank starts: once
// they run, a rank that stops early would leave the others waiting in a collective, so a failure
// there aborts the group.
void CpuRunner::validate(const StepInput& step) {
  const int64_t vocab = config().vocab_size;
  for (const StepSequence& seq : step.sequences) {
    // The forward's own checks: the chunk, the table's blocks and its reach.
    model_->check_chunk(seq.start_position, seq.tokens);
    CpuPagedKvView(*pool_, seq.block_tables)
        .reserve(seq.start_position + static_cast<int64_t>(seq.tokens.size()));
    if (!seq.prompt_logprob_targets.empty() &&
        (!seq.prompt_logprobs_out || seq.prompt_logprobs_row < 0 ||
         static_cast<size_t>(seq.prompt_logprobs_row) + seq.prompt_logprob_targets.size() >
             seq.tokens.size()))
      throw Error("CpuRunner: prompt logprobs past the chunk");
    for (const int32_t t : seq.prompt_logprob_targets)
      if (t < 0 || t >= vocab)
        throw Error("CpuRunner: prompt logprob target " + std::to_string(t) +
                    " outside the vocabulary of " + std::to_string(vocab));
    if (seq.sample && !seq.sampling.allowed_tokens.empty())
      throw Error("CpuRunner: masks come through StepSequence::fill_allowed_tokens");
  }
}

std::vector<SampledToken> CpuRunner::execute(const StepInput& step) {
  if (!pool_) throw Error("CpuRunner: execute before allocate_kv_cache");
  if (const std::string fault = device_fault(); !fault.empty())
    throw Error("CpuRunner: a tensor-parallel rank failed earlier (" + fault + ")");
  validate(step);
  const int64_t vocab = config().vocab_size;
  std::vector<float> last_rows;
  std::vector<SamplingRow> rows;
  for (auto& rank : ranks_) rank->start(step);
  try {
    for (const StepSequence& seq : step.sequences) {
      CpuPagedKvView kv(*pool_, seq.block_tables);
      const int64_t first = first_logit_row(seq);
      const std::vector<float> logits = model_->extend(kv, seq.start_position, seq.tokens, first);
      for (size_t i = 0; i < seq.prompt_logprob_targets.size(); ++i) {
        const size_t row = static_cast<size_t>(seq.prompt_logprobs_row - first) + i;
        seq.prompt_logprobs_out->push_back(
            prompt_logprob_on_cpu(std::span<const float>(logits).subspan(
                                      row * static_cast<size_t>(vocab), static_cast<size_t>(vocab)),
                                  seq.prompt_logprob_targets[i], seq.prompt_logprobs));
      }
      if (!seq.sample) continue;
      last_rows.insert(last_rows.end(), logits.end() - vocab, logits.end());
      rows.push_back(seq.sampling);
    }
  } catch (...) {
    if (group_) group_->abort("rank 0: " + describe_current_exception());
    for (auto& rank : ranks_) rank->wait();
    throw;
  }
  for (auto& rank : ranks_) rank->wait();
  if (const std::string fault = device_fault(); !fault.empty())
    throw Error("tensor-parallel step failed: " + fault);
  if (rows.empty()) return {};
  // Structured outputs' masks, filled once every rank is done (a grammar error fails the step,
  // not the group).
  std::vector<std::vector<uint32_t>> masks;
  masks.reserve(rows.size());
  size_t row = 0;
  for (const StepSequence& seq : step.sequences) {
    if (!seq.sample) continue;
    if (seq.fill_allowed_tokens) {
      masks.emplace_back(static_cast<size_t>((vocab + 31) / 32));
      seq.fill_allowed_tokens(masks.back());
      rows[row].allowed_tokens = masks.back();
    }
    ++row;
  }
  return sample_on_cpu(last_rows, vocab, rows);
}

}  // namespace l2kv
