#include "l2kv/engine/cuda_runner.h"

#include <algorithm>
#include <exception>
#include <thread>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_info.h"
#include "l2kv/sampling/gpu_sampler.h"
#include "l2kv/sampling/token_bitmask.h"

namespace l2kv {
namespace {

constexpr size_t kRowsPerThread = 4, kMaxRowThreads = 8;

// Runs f(0) .. f(rows - 1), independent host work per row, on up to kMaxRowThreads threads of
// at least kRowsPerThread rows; the first exception is rethrown after all have joined.
template <typename F>
void parallel_rows(size_t rows, F f) {
  const size_t threads = std::min<size_t>(
      {rows / kRowsPerThread, std::max(1u, std::thread::hardware_concurrency()), kMaxRowThreads});
  if (threads <= 1) {
    for (size_t i = 0; i < rows; ++i) f(i);
    return;
  }
  std::vector<std::exception_ptr> errors(threads);
  std::vector<std::thread> pool;
  for (size_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      try {
        for (size_t i = t; i < rows; i += threads) f(i);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  for (auto& th : pool) th.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace

std::vector<int32_t> decode_graph_buckets(int32_t max_seqs) {
  std::vector<int32_t> sizes;
  for (int32_t s : {1, 2, 4})
    if (s < max_seqs) sizes.push_back(s);
  for (int32_t s = 8; s < max_seqs; s += 8) sizes.push_back(s);
  sizes.push_back(max_seqs);
  return sizes;
}

CudaRunner::CudaRunner(std::shared_ptr<CudaModel> model, CudaRunnerOptions options)
    : model_(std::move(model)), options_(options) {
  device_ = model_->device();
  L2KV_CUDA_CHECK(cudaSetDevice(device_));
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  state_ = std::make_unique<CudaStepState>(model_);
  state_->set_decode_attention(options_.attention, options_.kv_prefetch);
  state_->set_kv_storage(options_.kv_storage);
  state_->set_calculate_kv_scales(options_.calculate_kv_scales);
  state_->set_use_graphs(options_.cuda_graphs);
  if (options_.fused_layer_max_rows >= 0)
    state_->set_fused_layer_max_rows(options_.fused_layer_max_rows);
  for (auto& pair : events_)
    for (cudaEvent_t& e : pair) L2KV_CUDA_CHECK(cudaEventCreate(&e));
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&mask_stream_, cudaStreamNonBlocking));
  L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&masks_uploaded_, cudaEventDisableTiming));
}

CudaRunner::~CudaRunner() {
  sampler_.reset();
  free_masks();
  if (device_prompt_logits_) cudaFree(device_prompt_logits_);
  state_.reset();
  model_.reset();
  for (auto& pair : events_)
    for (cudaEvent_t e : pair)
      if (e) cudaEventDestroy(e);
  if (masks_uploaded_) cudaEventDestroy(masks_uploaded_);
  if (mask_stream_) cudaStreamDestroy(mask_stream_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaRunner::free_masks() {
  if (host_masks_) cudaFreeHost(host_masks_);
  if (host_mask_rows_) cudaFreeHost(host_mask_rows_);
  if (device_masks_) cudaFree(device_masks_);
  if (device_mask_rows_) cudaFree(device_mask_rows_);
  host_masks_ = nullptr, host_mask_rows_ = nullptr;
  device_masks_ = nullptr, device_mask_rows_ = nullptr;
  mask_rows_ = 0;
}

std::string CudaRunner::device_name() const {
  return "cuda:" + std::to_string(device_) + " " + query_device_info(device_).name;
}

KvCacheSizing CudaRunner::prepare(int32_t block_size, int32_t max_batched_tokens, int32_t max_seqs,
                                  int32_t max_model_len, double memory_utilization) {
  L2KV_CUDA_CHECK(cudaSetDevice(device_));
  if (!(memory_utilization > 0.0 && memory_utilization <= 1.0))
    throw Error("gpu_memory_utilization must be in (0, 1], got " +
                std::to_string(memory_utilization));
  block_size_ = block_size;
  max_seqs_ = max_seqs;
  // Sliding-window layers get KV cache groups of their own, so their old blocks can be freed.
  if (state_->num_kv_blocks() == 0)
    state_->set_kv_cache_groups(options_.window_kv_groups ? windowed_kv_cache_groups(config())
                                                          : single_kv_cache_group(config()));
  state_->allocate_workspace({max_batched_tokens, max_seqs, max_model_len, 0});
  // Penalties need the rows' histories; bound them by what one step can hold.
  const int64_t history = std::min<int64_t>(int64_t{max_seqs} * max_model_len, int64_t{1} << 24);
  // Allocated before the free memory is read, so the KV cache is sized without it. A
  // tensor-parallel rank other than 0 samples nothing.
  if (!follower())
    sampler_ = std::make_unique<GpuSampler>(config().vocab_size, max_seqs, history,
                                            GpuSampler::default_scratch_rows(max_seqs, device_));
  // A tensor-parallel rank allocates nothing once steps run (a collective may be spinning).
  if (model_->tensor_parallel()) {
    allocate_prompt_logits();
    if (sampler_) sampler_->reserve_prompt_logprobs();
  }
  if (max_seqs > mask_rows_) {  // a later prepare() may ask for more sequences
    free_masks();
    mask_words_ = (config().vocab_size + 31) / 32;
    const size_t mask_bytes = sizeof(uint32_t) * static_cast<size_t>(mask_words_) * max_seqs;
    const size_t row_bytes = sizeof(int32_t) * static_cast<size_t>(max_seqs);
    L2KV_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host_masks_), mask_bytes));
    L2KV_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&host_mask_rows_), row_bytes));
    L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_masks_), mask_bytes));
    L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_mask_rows_), row_bytes));
    mask_rows_ = max_seqs;
  }
  size_t free_bytes = 0, total_bytes = 0;
  L2KV_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const double allowed = memory_utilization * static_cast<double>(total_bytes);
  const double used = static_cast<double>(total_bytes - free_bytes);
  KvCacheSizing sizing;
  sizing.group_windows = state_->kv_cache_groups().windows;
  sizing.bytes_per_block = state_->kv_block_bytes(block_size);
  sizing.bytes_available =
      std::max<int64_t>(0, static_cast<int64_t>(allowed - used) - options_.reserve_bytes);
  return sizing;
}

void CudaRunner::allocate_kv_cache(int32_t num_blocks) {
  allocate_kv_cache_without_graphs(num_blocks);
  capture_graphs();
  warm_up_prompt_step();
}

void CudaRunner::warm_up_prompt_step() {
  // Tensor-parallel ranks would each wait for the others' collectives here.
  if (model_->tensor_parallel() || state_->num_kv_blocks() == 0) return;
  const WorkspaceLimits& limits = state_->limits();
  // A full step's rows, as the first prompts will run, up to a bound on the start-up time (a
  // quadratic prefill of a 128K-token budget would take seconds).
  constexpr int32_t kMaxWarmUpTokens = 8192;
  const int32_t len = std::min({limits.max_tokens, limits.max_model_len, kMaxWarmUpTokens});
  if (len < 2) return;
  const std::vector<int32_t> tokens(static_cast<size_t>(len), 0);
  // Every position in block 0, which the block manager never hands out.
  const std::vector<int32_t> table(static_cast<size_t>((len + block_size_ - 1) / block_size_), 0);
  const int32_t groups = state_->kv_cache_groups().num_groups();
  const std::vector<std::span<const int32_t>> group_tables(groups > 1 ? groups : 0, table);
  const BatchSequence warm{tokens, 0, table, true, group_tables};
  // fp8 KV scales still to calculate would come from this step's K and V: re-armed after it.
  const bool rearm_kv_scales = state_->kv_scales_pending();
  state_->prepare(std::span<const BatchSequence>(&warm, 1), 0, stream_);
  state_->forward(stream_);
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream_));
  if (rearm_kv_scales) state_->set_calculate_kv_scales(true);
}

void CudaRunner::allocate_kv_cache_without_graphs(int32_t num_blocks) {
  L2KV_CUDA_CHECK(cudaSetDevice(device_));
  state_->allocate_kv_cache(num_blocks, block_size_);
}

void CudaRunner::capture_graphs() {
  for (const int32_t bucket : graph_buckets()) capture_graph(bucket);
}

std::vector<int32_t> CudaRunner::graph_buckets() const {
  if (!options_.cuda_graphs || state_->num_kv_blocks() == 0) return {};
  return decode_graph_buckets(max_seqs_);
}

void CudaRunner::capture_graph(int32_t bucket) {
  L2KV_CUDA_CHECK(cudaSetDevice(device_));
  const int32_t one[] = {bucket};
  state_->capture_decode_graphs(one, stream_);
}

void CudaRunner::set_decode_attention(DecodeKernel kernel, const PrefetchPolicy& policy) {
  set_decode_attention_without_graphs(kernel, policy);
  capture_graphs();
}

void CudaRunner::set_decode_attention_without_graphs(DecodeKernel kernel,
                                                     const PrefetchPolicy& policy) {
  L2KV_CUDA_CHECK(cudaSetDevice(device_));
  options_.attention = kernel;
  options_.kv_prefetch = policy;
  state_->set_decode_attention(kernel, policy);
}

std::string CudaRunner::device_fault() {
  // A launch's configuration error is the call's alone and is cleared by reading it; an error
  // of work already running on the device (illegal address, trap, ECC, device lost) is sticky:
  // every later call returns it, and the context can run nothing more.
  cudaGetLastError();
  cudaError_t status = cudaSetDevice(device_);
  if (status == cudaSuccess) status = cudaStreamSynchronize(stream_);
  if (status == cudaSuccess) return {};
  return std::string("CUDA error ") + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
         ") on cuda:" + std::to_string(device_);
}

std::vector<SampledToken> CudaRunner::execute(const StepInput& step) {
  stage(step);
  return run_staged(step);
}

void CudaRunner::launch(const StepInput& step) {
  if (follower()) throw Error("CudaRunner: a tensor-parallel rank runs steps through execute()");
  if (launched_.size() >= 2)
    throw Error("CudaRunner: a third step launched before the first was collected");
  stage(step);
  enqueue_staged();
}

std::vector<SampledToken> CudaRunner::collect(const StepInput& step) {
  return finish_launched(step);
}

bool CudaRunner::follower() const {
  return model_->tensor_parallel() && model_->shard().rank != 0;
}

void CudaRunner::stage(const StepInput& step) {
  L2KV_CUDA_CHECK(cudaSetDevice(device_));
  staged_ = false;
  batch_.clear();
  rows_.clear();
  int32_t masked_rows = 0;
  deferred_masks_.clear();
  bool decode_only = true;
  bool prompt_logprobs_asked = false;
  for (const StepSequence& s : step.sequences) {
    if (s.pending_token_row >= 0 && (!sampler_ || launched_.empty()))
      throw Error("CudaRunner: a pending token without a launched step that sampled it");
    batch_.push_back(
        {s.tokens, s.start_position, {}, s.sample, s.block_tables, s.pending_token_row});
    if (!s.prompt_logprob_targets.empty()) {
      if (!s.prompt_logprobs_out || s.prompt_logprobs_row < 0 ||
          static_cast<size_t>(s.prompt_logprobs_row) + s.prompt_logprob_targets.size() >
              s.tokens.size())
        throw Error("CudaRunner: prompt logprobs past the chunk");
      prompt_logprobs_asked = true;
    }
    decode_only &= s.tokens.size() == 1 && s.sample;
    if (!s.sample) continue;
    SamplingRow row = s.sampling;
    if (!row.params->penalized())
      row.prompt_tokens = {}, row.output_tokens = {};  // no history to upload
    if (!row.allowed_tokens.empty())
      throw Error("CudaRunner: masks come through StepSequence::fill_allowed_tokens");
    if (s.fill_allowed_tokens) {
      if (masked_rows >= mask_rows_)
        throw Error("CudaRunner: more constrained rows than the " + std::to_string(mask_rows_) +
                    " prepared");
      deferred_masks_.push_back({&s, masked_rows});
      host_mask_rows_[masked_rows++] = static_cast<int32_t>(rows_.size());
    }
    rows_.push_back(row);
  }
  const int32_t n = static_cast<int32_t>(batch_.size());
  const int32_t pad_to = decode_only && options_.cuda_graphs ? state_->graph_bucket(n) : 0;
  staged_start_ = Clock::now();
  state_->prepare(batch_, pad_to, stream_);
  // The previous step's tokens, sampled on this stream, become this step's inputs there.
  if (int32_t* ids = state_->pending_ids())
    sampler_->write_pending_ids(ids, state_->num_rows(), stream_);
  staged_prepared_ = Clock::now();
  staged_masked_rows_ = masked_rows;
  staged_prompt_logprobs_ = prompt_logprobs_asked;
  staged_ = true;
}

std::vector<SampledToken> CudaRunner::run_staged(const StepInput& step) {
  enqueue_staged();
  return finish_launched(step);
}

void CudaRunner::enqueue_staged() {
  if (!staged_) throw Error("CudaRunner: run_staged() without a staged step");
  staged_ = false;
  L2KV_CUDA_CHECK(cudaSetDevice(device_));
  LaunchedStep l;
  l.masked_rows = follower() ? 0 : staged_masked_rows_;
  l.prompt_logprobs = staged_prompt_logprobs_;
  l.start = staged_start_;
  l.prepared = staged_prepared_;
  l.events = next_events_;
  next_events_ = 1 - next_events_;
  cudaEvent_t* events = events_[l.events];
  L2KV_CUDA_CHECK(cudaEventRecord(events[0], stream_));
  state_->forward(stream_);
  L2KV_CUDA_CHECK(cudaEventRecord(events[1], stream_));
  if (follower())
    rows_.clear();  // rank 0 samples; the other ranks' logits are not whole
  else
    fill_deferred_masks();  // while the GPU runs the forward
  if (l.masked_rows > 0) {
    // The previous step's apply has finished reading these (a step with masks is collected
    // before another is launched).
    L2KV_CUDA_CHECK(cudaMemcpyAsync(device_masks_, host_masks_,
                                    sizeof(uint32_t) * mask_words_ * l.masked_rows,
                                    cudaMemcpyHostToDevice, mask_stream_));
    L2KV_CUDA_CHECK(cudaMemcpyAsync(device_mask_rows_, host_mask_rows_,
                                    sizeof(int32_t) * l.masked_rows, cudaMemcpyHostToDevice,
                                    mask_stream_));
    L2KV_CUDA_CHECK(cudaEventRecord(masks_uploaded_, mask_stream_));
    L2KV_CUDA_CHECK(cudaStreamWaitEvent(stream_, masks_uploaded_, 0));
    // The logits are the step state's workspace, rewritten by every forward: masking them in place
    // spares a copy, and the sampler then reads them as sampler.h's step -1 defines.
    apply_token_bitmask(const_cast<float*>(state_->logits()), config().vocab_size, device_masks_,
                        device_mask_rows_, l.masked_rows, stream_);
  }
  if (!rows_.empty()) l.sampler_call = sampler_->sample(state_->logits(), rows_, stream_);
  L2KV_CUDA_CHECK(cudaEventRecord(events[2], stream_));
  launched_.push_back(l);
}

std::vector<SampledToken> CudaRunner::finish_launched(const StepInput& step) {
  if (launched_.empty()) throw Error("CudaRunner: collect() without a launched step");
  const LaunchedStep l = launched_.front();
  launched_.pop_front();
  L2KV_CUDA_CHECK(cudaSetDevice(device_));
  if (l.prompt_logprobs && !launched_.empty())
    throw Error("CudaRunner: a step with prompt logprobs is collected before another launch");
  cudaEvent_t* events = events_[l.events];
  std::vector<SampledToken> sampled;
  if (l.sampler_call >= 0) sampled = sampler_->results_of(l.sampler_call);
  if (l.prompt_logprobs) prompt_logprobs(step);
  // The results' copy precedes the step's last event, which the timings need complete.
  L2KV_CUDA_CHECK(cudaEventSynchronize(events[2]));
  float forward_ms = 0, sample_ms = 0;
  L2KV_CUDA_CHECK(cudaEventElapsedTime(&forward_ms, events[0], events[1]));
  L2KV_CUDA_CHECK(cudaEventElapsedTime(&sample_ms, events[1], events[2]));
  ++profile_.steps;
  profile_.host_prepare_ms +=
      std::chrono::duration<double, std::milli>(l.prepared - l.start).count();
  profile_.gpu_forward_ms += forward_ms;
  profile_.gpu_sample_ms += sample_ms;
  profile_.execute_ms += std::chrono::duration<double, std::milli>(Clock::now() - l.start).count();
  return sampled;
}

// One mask costs 0.02 ms from a grammar's cache and up to tens of ms for a parse state seen
// the first time (bench/NOTES.md); 64 constrained rows on one thread outlast a decode step.
// Rows are independent (each its own matcher; a shared CompiledGrammar locks its cache).
void CudaRunner::fill_deferred_masks() {
  parallel_rows(deferred_masks_.size(), [&](size_t i) {
    const auto& [seq, slot] = deferred_masks_[i];
    seq->fill_allowed_tokens(std::span<uint32_t>(
        host_masks_ + static_cast<int64_t>(slot) * mask_words_, static_cast<size_t>(mask_words_)));
  });
}

static_assert(CudaRunner::kPromptLogprobRows <= GpuSampler::kMaxPromptLogprobRows);

void CudaRunner::allocate_prompt_logits() {
  if (device_prompt_logits_ || follower()) return;
  L2KV_CUDA_CHECK(
      cudaMalloc(reinterpret_cast<void**>(&device_prompt_logits_),
                 sizeof(float) * static_cast<size_t>(kPromptLogprobRows * config().vocab_size)));
}

void CudaRunner::prompt_logprobs(const StepInput& step) {
  allocate_prompt_logits();
  int64_t first_row = 0;  // the sequence's first row in the step (CudaStepState::prepare's order)
  for (const StepSequence& s : step.sequences) {
    const auto targets = static_cast<int64_t>(s.prompt_logprob_targets.size());
    for (int64_t done = 0; done < targets; done += kPromptLogprobRows) {
      const auto rows = static_cast<int32_t>(std::min<int64_t>(kPromptLogprobRows, targets - done));
      // Under tensor parallelism a collective: every rank runs the LM head over the rows.
      state_->hidden_row_logits(static_cast<int32_t>(first_row + s.prompt_logprobs_row + done),
                                rows, device_prompt_logits_, stream_);
      if (follower()) continue;
      // Log-softmax, rank and top tokens on the device: only the results come back.
      for (PromptLogprob& row : sampler_->prompt_logprobs(
               device_prompt_logits_, s.prompt_logprob_targets.subspan(done, rows),
               s.prompt_logprobs, stream_))
        s.prompt_logprobs_out->push_back(std::move(row));
    }
    first_row += static_cast<int64_t>(s.tokens.size());
  }
}

}  // namespace l2kv
