// The CUDA model runner: a CudaModel (weights, forward ops), its CudaStepState (workspace, KV
// pool, step plans, decode graphs) and the GPU sampler, on one device. Decode-only steps replay the
// CUDA graph of the smallest captured batch bucket that holds them (1, 2, 4, 8, then steps of 8 up
// to max_num_seqs); steps with prompt chunks run eagerly. The decode kernel (split or the paper's
// paged_v1) and its L2 prefetch policy are run-time options, so both methods run in the same
// engine.
//
// Prompt logprobs: after a step whose chunks ask for them, the LM head runs again over those
// chunks' rows (CudaStepState::hidden_row_logits, kPromptLogprobRows rows at a time into a
// buffer allocated on the first such step), and each row's logprob, rank and top tokens are
// taken on the device (GpuSampler::prompt_logprobs, the formula of prompt_logprob_on_cpu): only
// those come back. Other steps run nothing for them. Under tensor parallelism every rank runs
// the LM head over the rows and rank 0 gathers the logits and takes the logprobs.
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "l2kv/engine/cuda_step_state.h"
#include "l2kv/engine/model_runner.h"
#include "l2kv/model/cuda_model.h"

namespace l2kv {

class GpuSampler;

struct CudaRunnerOptions {
  DecodeKernel attention = DecodeKernel::kSplit;
  PrefetchPolicy kv_prefetch = PrefetchPolicy::automatic();
  bool cuda_graphs = true;
  KvStorage kv_storage = KvStorage::kModelDtype;  // fp8: both decode kernels read E4M3 K/V
  bool calculate_kv_scales =
      true;  // fp8 scales from the first prompt where the checkpoint has none
  // CudaStepState::set_fused_layer_max_rows; -1 keeps the model's default.
  int32_t fused_layer_max_rows = -1;
  // Device memory kept out of the KV pool for graphs, the sampler and allocator slack.
  int64_t reserve_bytes = int64_t{512} << 20;
  // Sliding-window layers in KV cache groups of their own, whose blocks are freed as they
  // leave the window (windowed_kv_cache_groups); false: one block table for every layer.
  bool window_kv_groups = true;
};

// The graph buckets for up to `max_seqs` sequences: 1, 2, 4, 8, then multiples of 8.
std::vector<int32_t> decode_graph_buckets(int32_t max_seqs);

class CudaRunner : public ModelRunner {
 public:
  // `model` lives on the current device; the runner works on that device from then on. The
  // model may be shared with a benchmark that also drives it directly between engine runs.
  CudaRunner(std::shared_ptr<CudaModel> model, CudaRunnerOptions options);
  ~CudaRunner() override;

  // The model as published (a tensor-parallel rank's CudaModel computes a part of it).
  const ModelConfig& config() const override { return model_->whole_config(); }
  std::string device_name() const override;
  KvCacheSizing prepare(int32_t block_size, int32_t max_batched_tokens, int32_t max_seqs,
                        int32_t max_model_len, double memory_utilization) override;
  void allocate_kv_cache(int32_t num_blocks) override;
  std::vector<SampledToken> execute(const StepInput& step) override;
  // Asynchronous steps: launch() stages the step, has the sampler write its pending tokens
  // from the previous step's samples on the device, enqueues the forward and the sampling and
  // returns; collect() waits for that step's sampled tokens only (the next may be running).
  // Not on a tensor-parallel rank (TensorParallelCudaRunner runs every step through execute()).
  void launch(const StepInput& step) override;
  std::vector<SampledToken> collect(const StepInput& step) override;
  std::string device_fault() override;
  bool supports_prompt_logprobs() const override { return true; }

  // execute() in two halves, for tensor parallelism (TensorParallelCudaRunner): stage()
  // validates the step and uploads its metadata (host work, no collective: a step it refuses
  // is refused by every rank alike), run_staged() runs the forward and, on rank 0 or a whole
  // model, samples. A rank other than 0 returns no tokens.
  void stage(const StepInput& step);
  std::vector<SampledToken> run_staged(const StepInput& step);

  // Rows of prompt logits computed and copied to the host at once.
  static constexpr int32_t kPromptLogprobRows = CudaModel::kMaxHiddenRowLogits;

  // Switches the decode kernel and its prefetch policy; recaptures the graphs.
  void set_decode_attention(DecodeKernel kernel, const PrefetchPolicy& policy);

  // allocate_kv_cache and set_decode_attention in two halves, for tensor parallelism: the
  // first allocates or frees buffers (no collective), capture_graphs() runs each graph bucket
  // once and captures it (a collective on every rank). No rank may still be in a first half
  // while another captures: a free waits for the whole device, a peer's collective included.
  void allocate_kv_cache_without_graphs(int32_t num_blocks);
  void set_decode_attention_without_graphs(DecodeKernel kernel, const PrefetchPolicy& policy);
  void capture_graphs();
  // capture_graphs() one bucket at a time: tensor-parallel ranks sharing a GPU meet between
  // buckets, since instantiating a graph waits for the device's running kernels, which may be
  // a peer's collective waiting for this rank.
  std::vector<int32_t> graph_buckets() const;
  void capture_graph(int32_t bucket);

  // Where execute() spends its time, summed over steps since the last reset: host work
  // before the launch (metadata, planning), GPU time of the forward pass and of sampling
  // (events), and the wall time of execute() as a whole.
  struct StepProfile {
    int64_t steps = 0;
    double host_prepare_ms = 0, gpu_forward_ms = 0, gpu_sample_ms = 0, execute_ms = 0;
  };
  const StepProfile& profile() const { return profile_; }
  void reset_profile() { profile_ = {}; }

  // The device state steps run in (KV pool, workspace, graphs).
  const CudaStepState& step_state() const { return *state_; }
  cudaStream_t stream() const { return stream_; }
  const CudaRunnerOptions& options() const { return options_; }

 private:
  using Clock = std::chrono::steady_clock;
  // A tensor-parallel rank other than 0: it runs the forward with rank 0 but samples nothing.
  bool follower() const;
  // One prompt-sized forward on the pad block before the first request, so that request does
  // not pay for the prefill kernels' first launches (module loading, GEMM plans).
  void warm_up_prompt_step();
  std::shared_ptr<CudaModel> model_;
  std::unique_ptr<CudaStepState> state_;  // made on the model's device, freed before the stream
  CudaRunnerOptions options_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<GpuSampler> sampler_;
  int32_t block_size_ = 16;
  int32_t max_seqs_ = 0;
  std::vector<BatchSequence> batch_;  // reused between steps
  std::vector<SamplingRow> rows_;
  // Structured outputs: the allowed-token masks of a step's constrained rows (pinned staging,
  // device copy) and which logits row each applies to.
  int64_t mask_words_ = 0;
  int32_t mask_rows_ = 0;  // rows the mask buffers hold
  uint32_t* host_masks_ = nullptr;
  int32_t* host_mask_rows_ = nullptr;
  uint32_t* device_masks_ = nullptr;
  int32_t* device_mask_rows_ = nullptr;
  // The masks go up on their own stream while the forward still runs on stream_, which waits
  // for masks_uploaded_ before applying them.
  cudaStream_t mask_stream_ = nullptr;
  cudaEvent_t masks_uploaded_ = nullptr;
  // This step's rows whose masks are filled after the forward is launched.
  struct DeferredMask {
    const StepSequence* sequence;
    int32_t slot;  // its row of host_masks_
  };
  std::vector<DeferredMask> deferred_masks_;
  void fill_deferred_masks();
  // Prompt logprobs: kPromptLogprobRows rows of fp32 logits on the device, allocated by the
  // first step that asks for them.
  float* device_prompt_logits_ = nullptr;
  StepProfile profile_;
  // The step stage() prepared for run_staged().
  bool staged_ = false;
  int32_t staged_masked_rows_ = 0;
  bool staged_prompt_logprobs_ = false;
  Clock::time_point staged_start_, staged_prepared_;
  void free_masks();
  // The prompt logits buffer: by the first step that asks for prompt logprobs, or by prepare()
  // under tensor parallelism; never on ranks other than 0 (they only feed rank 0's LM head).
  void allocate_prompt_logits();
  // Appends the prompt logprobs of every sequence of `step` that asks for them (after the
  // step's forward is enqueued on stream_); synchronizes.
  void prompt_logprobs(const StepInput& step);
  // run_staged() in two halves: enqueue the staged step (forward, masks, sampling), then wait
  // for the oldest enqueued one and take its tokens.
  void enqueue_staged();
  std::vector<SampledToken> finish_launched(const StepInput& step);
  // Steps enqueued and not yet finished, oldest first (at most two).
  struct LaunchedStep {
    int32_t masked_rows = 0;
    bool prompt_logprobs = false;
    int64_t sampler_call = -1;  // -1: no row sampled
    int events = 0;             // its pair of events_
    Clock::time_point start, prepared;
  };
  std::deque<LaunchedStep> launched_;
  // Per launched step, in turn: forward start, forward end, sampling end.
  cudaEvent_t events_[2][3] = {};
  int next_events_ = 0;
};

}  // namespace l2kv
