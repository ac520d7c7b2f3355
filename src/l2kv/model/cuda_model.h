// The CUDA backend's model: the same graph as CpuModel on the GPU, 16-bit weights and
// activations in the checkpoint's dtype (fp16 or bf16) with an fp32 residual stream, K/V
// written to a paged cache (HND). It holds the weights and runs the forward ops of
// decoder_graph.h over what a call is handed (CudaForwardStep): the step's device metadata,
// activations, KV pools and planned attention, which the runner's step state owns
// (engine/cuda_step_state.h). It knows nothing of batches, pools or graphs beyond that.
//
// Weights are allocated at construction; a forward allocates nothing and never synchronizes,
// so a CUDA graph can capture it.
//
// Tensor parallelism (parallel/tensor_parallel.h): a model made with a DeviceCommunicator is one
// rank's part. config() is then that part (its attention heads, KV heads and MLP features; the
// vocabulary stays whole), every forward is a collective (the O and down projections' partial
// sums are all-reduced, the LM head's columns gathered into rank 0's logits), and the fused
// layer is off (its residual epilogues would add partial sums).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "l2kv/core/device_array.h"
#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/kernels/model/row_sumsq.h"
#include "l2kv/model/cuda_attention.h"
#include "l2kv/model/model_config.h"
#include "l2kv/parallel/tensor_parallel.h"

namespace l2kv {

class DeviceCommunicator;

// Activation buffers of forward passes of up to a fixed number of query rows and rows of
// logits (CudaModel::allocate_activations sizes them; the step state holds them).
struct CudaActivations {
  DeviceArray<float> residual, logits;
  // Two accumulators of the residual rows' sums of squares for the fused layer's RMSNorms
  // (fixed point, row_sumsq.h; kGemvMaxRows each): [0] feeds the QKV projections, [1] gate_up
  // or, at 2-16 rows, ops::weighted_silu_mul.
  DeviceArray<RowSumsq> sumsq;
  DeviceArray<uint16_t> h, qkv, q, attn, proj, gate_up, act, last;
  // The fused layer's gate_up product on cuBLASLt at 2-16 rows, in float32 before its rows'
  // RMSNorm scales ([kGemvMaxRows, 2 x intermediate]; dense bf16 models with 16-bit weights).
  DeviceArray<float> gate_up_f32;
  // Rows of h copied for hidden_row_logits (kMaxHiddenRowLogits x hidden).
  DeviceArray<uint16_t> hidden_rows;
  // A mixture of experts (slots = rows x experts per token; gate_up and act above are sized for
  // the slots): the router's logits [rows, experts], each slot's expert and weight; on the device
  // path the slots grouped by expert (moe_slot_rows, moe_first), on the host path each slot's row
  // in moe_y (moe_slot_rows) and the token row that feeds each gathered row (moe_x_rows); h's
  // rows gathered per slot (host path), and each slot's expert output [slots, hidden].
  DeviceArray<float> router_logits, moe_weights;
  DeviceArray<int32_t> moe_experts, moe_slot_rows, moe_x_rows;
  DeviceArray<int32_t> moe_first;   // [experts + 1]: where each expert's slots start (moe_group)
  DeviceArray<int32_t> moe_active;  // [experts + 1]: how many experts are chosen, then which
  DeviceArray<uint16_t> moe_x, moe_y;
  // fp8 models: a projection's input rows quantized per token for the fp8 product of steps
  // with more rows than the fp8 GEMV takes ([rows, widest input] codes, [rows] scales), and the
  // product before its scales ([up to Gemm::kFp8ScaledAfterMaxRows rows, widest output]).
  DeviceArray<uint8_t> fp8_codes;
  DeviceArray<float> fp8_row_scales, fp8_product;
  // Tensor parallelism: this rank's logits [logit rows, its vocabulary] and, on rank 0, every
  // rank's ([ranks][logit rows x CudaModel::logit_part_stride()]) before they are interleaved
  // into `logits`.
  DeviceArray<float> logits_part, logits_gathered;
};

// Events around each projection and attention launch of an eager forward (profiling).
struct ForwardEvents {
  struct Pair {
    cudaEvent_t start, stop;
  };
  std::vector<Pair> gemm, attention;
};

// What one forward pass is handed: the prepared step's shape, its metadata on the device, the
// activations, the KV pools and fp8 scales, and the attention planned for it.
struct CudaForwardStep {
  int32_t rows = 0;                  // query rows (pads included)
  int32_t logit_rows = 0;            // rows of logits, in last_rows order
  bool decode_only = true;           // one token per sequence, every sequence wants logits
  bool all_logits = false;           // every row's logits (rows <= the activations' logit rows)
  bool fused_layer = false;          // the fused layer (CudaModel::can_fuse_layer(rows) holds)
  bool calculate_kv_scales = false;  // compute the pending fp8 scales from this step's K/V
  // RoPE and the KV write in the QKV GEMV's epilogue where it applies (tests turn it off to
  // compare against the composition of the GEMV and ops::rope_and_cache).
  bool rope_epilogue = true;
  // [rows] each: token ids, positions; [logit_rows]: logits' rows.
  const int32_t *ids = nullptr, *positions = nullptr, *last_rows = nullptr;
  // [layer]: the KV slots of the rows in the layer's pool ([rows], -1: not kept) and the block
  // tables attention reads, those of the layer's KV cache group (kv_cache_groups.h).
  std::span<const int32_t*const> slots, block_tables;
  CudaActivations* activations = nullptr;
  // q, out, heads, scale and the paged-KV view; the forward sets each layer's pools and scales.
  DecodeAttentionParams attention;
  std::span<void*const> k_pools, v_pools;  // [layer]
  float* kv_scales = nullptr;              // device [layer][k, v]: what the kernels read
  CudaAttention* attention_op = nullptr;   // planned for this step
  ForwardEvents* events = nullptr;         // profiling: null when off
};

class CudaModel {
 public:
  // Weights from a Hugging Face folder (in the checkpoint's 16-bit dtype), or random ones in
  // `config`'s shapes (synthetic models), on the current device.
  explicit CudaModel(const std::filesystem::path& folder);
  CudaModel(const ModelConfig& config, uint64_t seed);
  // Rank comm.rank() of comm.size() of the same (tensor_parallel.h), on the communicator's
  // device; every rank's forwards must run together. `comm` must outlive the model. Throws
  // l2kv::Error for a split tp_shard() refuses, before reading any weight.
  CudaModel(const std::filesystem::path& folder, DeviceCommunicator& comm);
  CudaModel(const ModelConfig& config, uint64_t seed, DeviceCommunicator& comm);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  // What this model computes: the whole model, or a tensor-parallel rank's part of it.
  const ModelConfig& config() const { return config_; }
  // The model as its config.json describes it (config() for a whole model).
  const ModelConfig& whole_config() const { return whole_config_; }
  bool tensor_parallel() const { return comm_ != nullptr; }
  const TpShard& shard() const { return shard_; }  // rank 0 of 1 for a whole model
  int device() const { return device_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  // What one decode step must read of the weights: all of them but the embedding table, of
  // which only the batch's rows are read (unless it is tied to the LM head).
  int64_t streamed_weight_bytes() const;
  // K and V of all layers for one block of `block_size` tokens stored as `storage`.
  int64_t kv_block_bytes(KvStorage storage, int32_t block_size) const;
  // fp8 KV scales from the checkpoint, [layer][k, v] flattened (1 where a layer has none).
  std::vector<float> checkpoint_kv_scales() const;
  // True when some layer's checkpoint has no self_attn.k_scale/v_scale.
  bool missing_checkpoint_kv_scales() const;

  // How the cuBLASLt projections of decode steps choose their algorithm (Gemm::set_tuning);
  // set before the first forward.
  void set_gemm_tuning(Gemm::Tuning tuning) { gemm_.set_tuning(tuning); }
  // cuBLASLt shapes of up to this many rows time their candidates (Gemm::set_tune_max_rows).
  void set_gemm_tune_max_rows(int64_t rows) { gemm_.set_tune_max_rows(rows); }
  // Prompt-sized shapes up to this many rows are timed per bucket of row counts
  // (Gemm::set_prompt_tune_max_rows; 0: cuBLASLt's first choice).
  void set_gemm_prompt_tune_max_rows(int64_t rows) { gemm_.set_prompt_tune_max_rows(rows); }
  // fp8 models, steps of more rows than the fp8 GEMV takes: x quantized per token and multiplied
  // in fp8 (default, W8A8), or the weights widened to 16 bits (Gemm::set_fp8_activations). Set
  // it before graphs are captured (they keep the path they were captured with).
  void set_fp8_activations(bool quantized) { gemm_.set_fp8_activations(quantized); }
  // With W8A8: the norms and gated_mul write the next projection's fp8 codes, and they and
  // rope_and_cache scale back the product before them as they read it (default), or separate
  // kernels quantize and rescale
  // (the same values bit for bit; tests compare the two). Set before graphs are captured.
  void set_fp8_fused_scales(bool fused) { fp8_fused_scales_ = fused; }
  // The projections' dispatcher (tests ask which path a shape took).
  const Gemm& gemm() const { return gemm_; }

  // Activations for forward passes of up to `rows` query rows and `logit_rows` rows of logits.
  std::unique_ptr<CudaActivations> allocate_activations(int32_t rows, int32_t logit_rows) const;

  // Whether the fused layer (gemv.h's fusions) serves a step of `rows` query rows.
  bool can_fuse_layer(int32_t rows) const;
  // The steps the fused layer serves by default (CudaStepState::set_fused_layer_max_rows): up
  // to 16 rows for bf16 models with 16-bit weights, whose layer at 2-16 rows runs no RMSNorm
  // kernel (gate_up on cuBLASLt over the weighted x; faster at every size from 2 to 16 rows,
  // bench/NOTES.md "The fused layer at 2-16 rows"), else one row (fp16 models and fp8 weights
  // keep the norm prologues there, which lost from two rows).
  int32_t default_fused_layer_max_rows() const;
  // Whether a decode step of `rows` rows may be captured in a CUDA graph: always for a dense
  // model; for a mixture of experts while its slots (rows x experts per token) go through the
  // expert GEMV: up to kMoeGemvSlotsPerExpert per expert on average with kMoeManyExperts
  // experts or more, kMoeGemvSlotsPerLargeExpert with fewer (larger) ones. Larger steps group
  // their slots by expert on the host for cuBLASLt, which a graph cannot hold. Measured on an
  // H200 (bench/NOTES.md, "Mixtures of experts: thresholds and early launches"): Qwen3-30B-A3B
  // at 256 rows 41 ms on the GEMV against 126 on the host path (128 rows equal); Mixtral on the
  // GEMV 23.4 ms against 26.0 at 16 rows, but 32.6 against 27.5 at 32.
  static constexpr int32_t kMoeManyExperts = 32;
  static constexpr int32_t kMoeGemvSlotsPerExpert = 32;
  static constexpr int32_t kMoeGemvSlotsPerLargeExpert = 4;
  bool can_capture_rows(int32_t rows) const;
  // What a decode step of `batch` rows must read of the weights: streamed_weight_bytes(), but
  // of a mixture of experts only the experts its tokens choose: per layer the expected number of
  // distinct experts when choices fall uniformly (exact at batch 1, an estimate above).
  int64_t step_weight_bytes(int32_t batch) const;

  // Enqueues the decoder graph over `step` on `stream`: the embedding of its tokens, every
  // layer (appending K/V to the pools at the step's slots) and the LM head into
  // step.activations->logits. Allocation-free and graph-capturable (profiling events aside).
  void forward(const CudaForwardStep& step, cudaStream_t stream);

  // Prompt logprobs: the LM head over `rows` (1 to kMaxHiddenRowLogits) rows of the final
  // norm's output a forward left in `activations`, from row `first_row`, as fp32 logits
  // [rows, vocab] into the device buffer `out`, on `stream`. The caller checks the rows lie
  // inside that forward's step. A tensor-parallel model: a collective (every rank calls it with
  // the same rows); rank 0's `out` gets the logits, other ranks' may be null.
  static constexpr int32_t kMaxHiddenRowLogits = 64;
  void hidden_row_logits(CudaActivations& activations, int32_t first_row, int32_t rows, float* out,
                         cudaStream_t stream);

 private:
  struct Weights;
  struct GraphOps;  // this backend's ops of decoder_graph.h
  // Whether the fused layer has its 2-16-row form here (gate_up on cuBLASLt over the weighted x
  // into gate_up_f32, QKV after the first layer on the weighted x): bf16 models with 16-bit
  // weights. fp16 keeps the norm prologues (weight x residual can overflow it), and so do fp8
  // weights (not measured in that form).
  bool has_weighted_x_rows_form() const;
  CudaModel(const std::filesystem::path& folder, DeviceCommunicator* comm);
  CudaModel(const ModelConfig& config, uint64_t seed, DeviceCommunicator* comm);
  // Sets config_ and shard_ from whole_config_ and comm_; checks what the kernels take.
  void init_shard();
  // Floats between two ranks' LM-head parts in logits_gathered: the largest part, rounded up
  // to 16 bytes (the one-shot gather moves 16-byte vectors).
  int64_t logit_part_stride() const;
  // After the LM head: a tensor-parallel rank's part gathered into rank 0's `whole` ([rows,
  // vocab]), and rank 0's (or a whole model's) logits soft-capped.
  void complete_logits(CudaActivations& activations, int32_t rows, float* whole,
                       cudaStream_t stream) const;
  // Tensor parallelism: gathers every rank's `rows` rows of logits_part into rank 0's `whole`.
  void gather_logits(CudaActivations& activations, int32_t rows, float* whole,
                     cudaStream_t stream) const;
  // Gemma's final logit soft-capping over `rows` rows of logits, where the config has it.
  void cap_logits(float* logits, int32_t rows, cudaStream_t stream) const;
  void init_common();

  ModelConfig whole_config_;
  ModelConfig config_;
  DeviceCommunicator* comm_ = nullptr;
  TpShard shard_;
  int device_ = 0;
  int64_t weight_bytes_ = 0;
  std::unique_ptr<Weights> weights_;
  float* inv_freq_ = nullptr;
  float* local_inv_freq_ = nullptr;  // sliding-window layers' RoPE (Gemma 3)
  Gemm gemm_;
  // gate_up's rows are [gate | up] in paired order (paired_rows.h: the SiLU epilogue's layout);
  // false for an intermediate size that is not a multiple of 8, which the fused layer then skips.
  bool gate_up_interleaved_ = false;
  bool fp8_fused_scales_ = true;
};

}  // namespace l2kv
