// The CUDA runner's device state around a CudaModel: the activation workspace and the
// step-metadata buffers, the paged KV pool, the fp8 KV scales, the attention plan of the step
// being run, the decode steps captured as CUDA graphs per batch-size bucket, and profiling
// events. The model holds the weights and runs the forward over what this state hands it.
//
// Memory is allocated up front and never during a step: the activations and the step metadata
// (allocate_workspace), then the KV pool (allocate_kv_cache). A step is prepared on the host
// (metadata packed into pinned memory and uploaded in two copies, attention planned) and then
// run; decode-only steps can be captured as CUDA graphs per batch-size bucket and replayed with
// the same buffer addresses.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "l2kv/model/cuda_attention.h"
#include "l2kv/model/cuda_model.h"
#include "l2kv/model/kv_cache_groups.h"

namespace l2kv {

// One sequence's new tokens in a batch (the device-level view of the engine's StepSequence).
struct BatchSequence {
  std::span<const int32_t> tokens;       // new tokens
  int32_t start_position = 0;            // tokens cached before them
  std::span<const int32_t> block_table;  // physical blocks covering the new length
  bool wants_logits = true;              // its last token's logits are computed
  // A pool of several KV cache groups (set_kv_cache_groups): one table per group, each like
  // block_table (which is then not read), a windowed group's entries before its window may be
  // block 0. Empty for a pool of one group.
  std::span<const std::span<const int32_t>> group_tables = {};
  // >= 0: the last token is not known on the host (asynchronous scheduling); the sampler writes
  // it on the device (pending_ids()): the token its last call drew in this row.
  int32_t pending_row = -1;

  std::span<const int32_t> table(int32_t group) const {
    return group_tables.empty() ? block_table : group_tables[static_cast<size_t>(group)];
  }
};

struct WorkspaceLimits {
  int32_t max_tokens = 2048;     // query rows of one step
  int32_t max_seqs = 256;        // sequences of one step (graph buckets included)
  int32_t max_model_len = 4096;  // longest sequence: fixes the block-table stride
  int32_t max_logit_rows = 0;    // 0 = max_seqs; tests that want every row's logits raise it
};

class CudaStepState {
 public:
  // State for `model` on its device (the current one). Several states may share one model
  // (a benchmark's beside an engine's), one step in flight at a time.
  explicit CudaStepState(std::shared_ptr<CudaModel> model);
  ~CudaStepState();
  CudaStepState(const CudaStepState&) = delete;
  CudaStepState& operator=(const CudaStepState&) = delete;

  CudaModel& model() { return *model_; }
  const CudaModel& model() const { return *model_; }
  const ModelConfig& config() const { return model_->config(); }

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
  // How the layers share the pool (kv_cache_groups.h); single_kv_cache_group by default. Set
  // before allocate_kv_cache; throws once a pool exists.
  void set_kv_cache_groups(KvCacheGroups groups);
  const KvCacheGroups& kv_cache_groups() const { return groups_; }
  // K and V one block id holds (every slot of the groups) for blocks of `block_size` tokens,
  // as this state stores them.
  int64_t kv_block_bytes(int32_t block_size) const;
  // Allocates the paged KV pool: `num_blocks` blocks per slot. Drops captured graphs.
  void allocate_kv_cache(int32_t num_blocks, int32_t block_size);
  // Frees the pool (and the graphs that refer to it).
  void release_kv_cache();
  int32_t num_kv_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  // The pools of one layer (benchmarks fill them with random K/V).
  void* k_pool(int64_t layer) const { return k_pools_[slot_of(layer)]; }
  void* v_pool(int64_t layer) const { return v_pools_[slot_of(layer)]; }

  // Which kernel runs decode-only steps, and its L2 prefetch policy. Drops captured graphs.
  void set_decode_attention(DecodeKernel kernel, const PrefetchPolicy& policy);

  // Host part of a step: validates `batch`, packs its metadata into pinned memory, uploads it
  // on `stream` (only the table entries in use) and plans attention. A decode-only batch may be
  // padded to `pad_to` rows (a graph bucket): the pad rows run token 0 at position 0, keep no K/V
  // and attend to block 0, which the block manager never hands out. Returns the logits rows: one
  // per sequence with wants_logits, in order (pad rows follow them).
  int32_t prepare(std::span<const BatchSequence> batch, int32_t pad_to, cudaStream_t stream);

  // Enqueues the forward pass of the prepared step on `stream`: a graph replay where one is
  // captured for this decode batch size, else the kernels one by one.
  void forward(cudaStream_t stream);
  // The prepared step's input ids on the device, where each token of a sequence with
  // pending_row is -(pending_row + 1) until GpuSampler::write_pending_ids fills it in; null
  // when the step has none.
  int32_t* pending_ids() const;
  int32_t num_rows() const { return step_.rows; }
  // Device logits [rows, vocab] (fp32) of the last forward.
  const float* logits() const;

  // Prompt logprobs: the LM head over `rows` (1 to CudaModel::kMaxHiddenRowLogits) query rows
  // of the forward last enqueued, from row `first_row` of the step (rows are the sequences'
  // tokens in batch order: sequence s's token i is row i plus the tokens of the sequences
  // before it), as fp32 logits [rows, vocab] into the device buffer `out`, on `stream` after
  // the forward. The rows are the final norm's output, which the step leaves in the workspace,
  // so this is extra work only for the steps that ask for it. Throws l2kv::Error before any
  // launch for rows outside the step.
  void hidden_row_logits(int32_t first_row, int32_t rows, float* out, cudaStream_t stream);

  // Captures the decode step of every size in `batch_sizes` as a CUDA graph. Runs each once
  // eagerly first (GEMM plans are chosen then), on pad rows only. Sizes the model cannot
  // capture (CudaModel::can_capture_rows) are left out: those steps run eagerly.
  void capture_decode_graphs(std::span<const int32_t> batch_sizes, cudaStream_t stream);
  bool has_graph(int32_t batch_size) const { return graphs_.count(batch_size) > 0; }
  void set_use_graphs(bool on) { use_graphs_ = on; }
  // Steps of up to `rows` rows (0 to 16, the GEMV's limit) run each layer in the fused form
  // (gemv.h's fusions: RMSNorm prologues or weighted x, residual and SiLU x up epilogues), larger
  // ones in nine kernels. The default is the model's (CudaModel::default_fused_layer_max_rows:
  // where measurements put the fused form ahead). Drops captured graphs.
  void set_fused_layer_max_rows(int32_t rows);
  int32_t fused_layer_max_rows() const { return fused_layer_max_rows_; }
  // Whether the QKV GEMV applies RoPE and writes K/V itself where it can (CudaForwardStep's
  // rope_epilogue; on by default). Off: the projection's store and ops::rope_and_cache, for
  // tests that compare the two. Drops captured graphs.
  void set_rope_epilogue(bool on);
  // The smallest captured bucket >= rows, or 0.
  int32_t graph_bucket(int32_t rows) const;

  // For tests and benchmarks, never the engine's path: prepare + forward + copy the logits to
  // the host (synchronizes). With all_logits every token's row (needs max_logit_rows >=
  // tokens), else one per sequence.
  std::vector<float> run_to_host(std::span<const BatchSequence> batch, bool all_logits,
                                 cudaStream_t stream);

  // With profiling on, eager forward passes time their projections and attention with events
  // (read after the stream synchronizes).
  struct OpTimes {
    double gemm_ms = 0, attention_ms = 0, total_ms = 0;
  };
  void set_profiling(bool on) { profiling_ = on; }
  OpTimes last_op_times();

 private:
  struct StepMetadata;
  struct PreparedStep {
    int32_t rows = 0;         // query rows (pads included)
    int32_t logit_rows = 0;   // rows of logits
    int32_t batch = 0;        // sequences (pads included)
    bool decode_only = true;  // one token per sequence, every sequence wants logits
    bool all_logits = false;
    bool calculate_kv_scales = false;  // this step computes the pending fp8 scales
    bool pending_ids = false;          // a sequence has pending_row
  };
  void reset_kv_scales();  // every layer to its checkpoint's scales (1 where none)
  void drop_graphs();
  void reserve_attention();  // the decode kernel's buffers for the workspace and pool
  void enqueue_forward(cudaStream_t stream);
  DecodeAttentionParams decode_params() const;
  void destroy_op_events();

  std::shared_ptr<CudaModel> model_;
  std::unique_ptr<CudaActivations> activations_;
  std::unique_ptr<StepMetadata> meta_;
  WorkspaceLimits limits_;
  // Rows of the activation and metadata buffers (query rows or sequences, whichever is more).
  int32_t row_capacity() const;
  // Block-table entries per sequence at the pool's block size: a table row's stride.
  int32_t table_stride() const;
  size_t slot_of(int64_t layer) const {
    return static_cast<size_t>(groups_.layer_slot[static_cast<size_t>(layer)]);
  }

  KvCacheGroups groups_;
  std::vector<void*> k_pools_, v_pools_;  // [slot]
  // The forward's per-layer view of the step: pools, block tables and KV slots of the layer's
  // group (set by enqueue_forward).
  std::vector<void*> layer_k_pools_, layer_v_pools_;
  std::vector<const int32_t*> layer_tables_, layer_slots_;
  int32_t num_blocks_ = 0;
  int32_t block_size_ = 16;
  KvStorage kv_storage_ = KvStorage::kModelDtype;
  float* kv_scales_ = nullptr;  // device [layers][k, v]: what the kernels read
  bool calculate_kv_scales_ = true;
  bool kv_scales_pending_ = false;
  CudaAttention attention_;
  PreparedStep step_;
  std::vector<int32_t> host_seq_lens_;  // of the prepared step
  std::map<int32_t, cudaGraphExec_t> graphs_;
  bool use_graphs_ = true;
  int32_t fused_layer_max_rows_ = 0;  // set by the constructor
  bool rope_epilogue_ = true;
  bool profiling_ = false;
  ForwardEvents op_events_;
  ForwardEvents::Pair total_events_{};
};

}  // namespace l2kv
