// The CUDA backend: the same graph as CpuModel on the GPU, 16-bit weights and activations in
// the checkpoint's dtype (fp16 or bf16) with an fp32 residual stream, K/V written to a paged
// cache (HND) through the block tables the caller gives. One forward pass runs a batch of
// sequences of different lengths.
//
// Memory is allocated up front and never during a step: weights at construction, then the
// activation workspace and the step-metadata buffers (allocate_workspace), then the KV pool
// (allocate_kv_cache). A step is prepared on the host (metadata packed into pinned memory and
// uploaded in one copy, attention planned) and then run; decode-only steps can be captured as
// CUDA graphs per batch-size bucket and replayed with the same buffer addresses.
//
// Attention: decode-only steps run the split-KV kernel or the paper's paged_v1 kernel (with
// its L2 prefetch policy); steps with prompt chunks run the tensor-core prefill kernel over
// every row (a decode row is a chunk of one token there).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/prefill_attention.h"
#include "l2kv/kernels/attention/split_decode.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/model/model_config.h"

namespace l2kv {

enum class DecodeKernel : uint8_t { kSplit, kPagedV1 };
const char* decode_kernel_name(DecodeKernel kernel);  // "split", "paged_v1"
DecodeKernel parse_decode_kernel(const std::string& name);

// One sequence's new tokens in a batch (the model-level view of the engine's StepSequence).
struct BatchSequence {
  std::span<const int32_t> tokens;       // new tokens
  int32_t start_position = 0;            // tokens cached before them
  std::span<const int32_t> block_table;  // physical blocks covering the new length
  bool wants_logits = true;              // its last token's logits are computed
};

struct WorkspaceLimits {
  int32_t max_tokens = 2048;     // query rows of one step
  int32_t max_seqs = 256;        // sequences of one step (graph buckets included)
  int32_t max_model_len = 4096;  // longest sequence: fixes the block-table stride
  int32_t max_logit_rows = 0;    // 0 = max_seqs; tests that want every row's logits raise it
};

class CudaModel {
 public:
  // Weights from a Hugging Face folder (in the checkpoint's 16-bit dtype), or random ones in
  // `config`'s shapes (synthetic models), on the current device.
  explicit CudaModel(const std::filesystem::path& folder);
  CudaModel(const ModelConfig& config, uint64_t seed);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const { return config_; }
  int device() const { return device_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  // What one decode step must read of the weights: all of them but the embedding table, of
  // which only the batch's rows are read (unless it is tied to the LM head).
  int64_t streamed_weight_bytes() const;

  // Allocates activations and step metadata for `limits` (once; a second call replaces them
  // and drops captured graphs).
  void allocate_workspace(const WorkspaceLimits& limits);
  const WorkspaceLimits& limits() const { return limits_; }
  // How K and V are stored: the model's dtype (default) or fp8 E4M3 with per-layer scales, read
  // by the decode and prefill kernels. Set before allocate_kv_cache; throws once a pool exists.
  void set_kv_storage(KvStorage storage);
  KvStorage kv_storage() const { return kv_storage_; }
  // fp8 scales of layers whose checkpoint has no self_attn.k_scale/v_scale: on (default), the
  // next step with a prompt chunk computes them from its K and V before storing them
  // (kernels/model/kv_scales.h, vLLM's --calculate-kv-scales) and they stay fixed from then on;
  // off, such layers use 1. Switching on re-arms the calculation; switching off resets those
  // layers to 1. Scales live in device memory, so captured graphs read the current ones.
  void set_calculate_kv_scales(bool on);
  bool calculate_kv_scales() const { return calculate_kv_scales_; }
  // True until a step has computed the scales (on, and some layer has no checkpoint scales).
  bool kv_scales_pending() const { return kv_scales_pending_; }
  // The current scales, [layer][k, v] flattened (copied from the device; synchronizes).
  std::vector<float> kv_scales() const;
  // K and V of all layers for one block of `block_size` tokens.
  int64_t kv_block_bytes(int32_t block_size) const;
  // Allocates the paged KV pool: `num_blocks` blocks per layer. Drops captured graphs.
  void allocate_kv_cache(int32_t num_blocks, int32_t block_size);
  // Frees the pool (and the graphs that refer to it).
  void release_kv_cache();
  int32_t num_kv_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  // The pools of one layer (benchmarks fill them with random K/V).
  void* k_pool(int64_t layer) const { return k_pools_[layer]; }
  void* v_pool(int64_t layer) const { return v_pools_[layer]; }

  // Which kernel runs decode-only steps, and its L2 prefetch policy. Drops captured graphs.
  void set_decode_attention(DecodeKernel kernel, const PrefetchPolicy& policy);

  // Host part of a step: validates `batch`, packs its metadata into pinned memory, uploads it
  // in one copy on `stream` and plans attention. A decode-only batch may be padded to
  // `pad_to` rows (a graph bucket): the pad rows run token 0 at position 0 and write their
  // K/V into block 0, which the block manager never hands out. Returns the logits rows: one
  // per sequence with wants_logits, in order (pad rows follow them).
  int32_t prepare(std::span<const BatchSequence> batch, int32_t pad_to, cudaStream_t stream);

  // Enqueues the forward pass of the prepared step on `stream`: a graph replay where one is
  // captured for this decode batch size, else the kernels one by one.
  void forward(cudaStream_t stream);
  // Device logits [rows, vocab] (fp32) of the last forward.
  const float* logits() const;

  // Prompt logprobs: the LM head over `rows` (1 to kMaxHiddenRowLogits) query rows of the
  // forward last enqueued, from row `first_row` of the step (rows are the sequences' tokens in
  // batch order: sequence s's token i is row i plus the tokens of the sequences before it),
  // as fp32 logits [rows, vocab] into the device buffer `out`, on `stream` after the forward.
  // The rows are the final norm's output, which the step leaves in the workspace, so this is
  // extra work only for the steps that ask for it. Throws l2kv::Error before any launch for
  // rows outside the step.
  static constexpr int32_t kMaxHiddenRowLogits = 64;
  void hidden_row_logits(int32_t first_row, int32_t rows, float* out, cudaStream_t stream);

  // Captures the decode step of every size in `batch_sizes` as a CUDA graph. Runs each once
  // eagerly first (GEMM plans are chosen then), on pad rows only.
  void capture_decode_graphs(std::span<const int32_t> batch_sizes, cudaStream_t stream);
  bool has_graph(int32_t batch_size) const { return graphs_.count(batch_size) > 0; }
  void set_use_graphs(bool on) { use_graphs_ = on; }
  // Steps of up to gemv max rows (16) run each layer in five kernels (gemv.h's fusions: RMSNorm
  // prologues, residual and SiLU x up epilogues) when on, in nine when off (the default, and what
  // larger steps always run: the five measured slower on an H200, bench/NOTES.md). Drops
  // captured graphs. Throws l2kv::Error for a model with fp8 projections.
  void set_fused_layer(bool on);
  bool fused_layer() const { return fused_layer_; }
  // The smallest captured bucket >= rows, or 0.
  int32_t graph_bucket(int32_t rows) const;

  // Convenience: prepare + forward + copy the logits to the host (synchronizes). With
  // all_logits every token's row (needs max_logit_rows >= tokens), else one per sequence.
  std::vector<float> run(std::span<const BatchSequence> batch, bool all_logits,
                         cudaStream_t stream);

  // With profiling on, eager forward passes time their projections and attention with events
  // (read after the stream synchronizes).
  struct OpTimes {
    double gemm_ms = 0, attention_ms = 0, total_ms = 0;
  };
  void set_profiling(bool on) { profiling_ = on; }
  OpTimes last_op_times();

 private:
  struct Weights;
  struct Workspace;
  struct GraphOps;  // this backend's ops of decoder_graph.h
  struct PreparedStep {
    int32_t rows = 0;         // query rows (pads included)
    int32_t logit_rows = 0;   // rows of logits
    int32_t batch = 0;        // sequences (pads included)
    bool decode_only = true;  // one token per sequence, every sequence wants logits
    bool all_logits = false;
    bool calculate_kv_scales = false;  // this step computes the pending fp8 scales
  };
  void init_common();
  void reset_kv_scales();  // every layer to its checkpoint's scales (1 where none)
  void drop_graphs();
  void enqueue_forward(cudaStream_t stream);
  bool fused_step(int32_t rows) const;  // the five-kernel layer serves a step of `rows`
  DecodeAttentionParams decode_params() const;
  void reserve_paged_v1();

  ModelConfig config_;
  int device_ = 0;
  int64_t weight_bytes_ = 0;
  std::unique_ptr<Weights> weights_;
  std::unique_ptr<Workspace> ws_;
  WorkspaceLimits limits_;
  std::vector<void*> k_pools_, v_pools_;
  int32_t num_blocks_ = 0;
  int32_t block_size_ = 16;
  KvStorage kv_storage_ = KvStorage::kModelDtype;
  float* kv_scales_ = nullptr;  // device [layers][k, v]: what the kernels read
  bool calculate_kv_scales_ = true;
  bool kv_scales_pending_ = false;
  float* inv_freq_ = nullptr;
  Gemm gemm_;
  SplitDecode split_;
  PagedV1Decode paged_v1_;
  PrefillAttention prefill_;
  DecodeKernel decode_kernel_ = DecodeKernel::kSplit;
  PrefetchPolicy prefetch_ = PrefetchPolicy::off();
  PreparedStep step_;
  std::vector<int32_t> host_seq_lens_;  // of the prepared step
  std::map<int32_t, cudaGraphExec_t> graphs_;
  bool use_graphs_ = true;
  bool fused_layer_ = false;
  // gate_up's rows interleave gate and up in groups of 8 (the SiLU epilogue's layout); false
  // for an intermediate size that is not a multiple of 8, which the fused layer then skips.
  bool gate_up_interleaved_ = false;
  bool profiling_ = false;
  struct EventPair {
    cudaEvent_t start, stop;
  };
  std::vector<EventPair> gemm_events_, attention_events_;
  EventPair total_events_{};
};

}  // namespace l2kv
