// The CPU backend: a float32 forward pass of a Llama / Mistral / Qwen2 / Qwen3 checkpoint, written
// for clarity. It is the reference the CUDA backend is tested against and what CI runs end to end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <vector>

#include "l2kv/model/hf_weights.h"
#include "l2kv/model/kv_cache_groups.h"
#include "l2kv/model/model_config.h"
#include "l2kv/parallel/communicator.h"
#include "l2kv/parallel/tensor_parallel.h"

namespace l2kv {

// Where the graph ops read and write one sequence's keys and values: a row of
// kv_heads * head_dim floats per layer and position. Two layouts implement it: the contiguous
// CpuSequenceState (one growing array per layer, for CpuModel's own API) and CpuPagedKvView
// (blocks of a shared pool through a block table, for the engine's CpuRunner).
class CpuKvCache {
 public:
  virtual ~CpuKvCache() = default;
  // Makes positions [0, length) addressable in every layer, or throws l2kv::Error.
  virtual void reserve(int64_t length) = 0;
  virtual float* key(int64_t layer, int64_t position) = 0;
  virtual float* value(int64_t layer, int64_t position) = 0;
  // Called once the keys and values of positions [first, first + count) of `layer` are written,
  // before they are read: a cache that stores another precision (tests mirroring the CUDA
  // backend's fp8 cache and its calculated scales) rounds them here.
  virtual void stored(int64_t layer, int64_t first, int64_t count) {
    (void)layer, (void)first, (void)count;
  }
};

// The keys and values one sequence has cached, per layer: [position][kv_heads * head_dim].
struct CpuSequenceState {
  std::vector<std::vector<float>> keys, values;
  int64_t length = 0;  // positions cached
};

// A host KV pool in blocks, the CPU twin of the CUDA paged pool: for K and for V,
// [slots][num_blocks][block_size][kv_heads * head_dim] floats, layer l in slot
// groups.layer_slot[l] (kv_cache_groups.h; one slot per layer unless the groups share them).
// Filled with NaN at first, so a read of a slot nobody wrote poisons the logits instead of
// passing unnoticed.
struct CpuKvPool {
  // `kv_heads`: the KV heads a tensor-parallel rank keeps (0: the model's). `groups`: how the
  // layers share the pool (default: single_kv_cache_group).
  CpuKvPool(const ModelConfig& config, int64_t num_blocks, int64_t block_size, int64_t kv_heads = 0,
            std::optional<KvCacheGroups> groups = std::nullopt);

  KvCacheGroups groups;
  int64_t num_blocks = 0, block_size = 0, row_size = 0;
  std::vector<float> keys, values;

  // Bytes of K and V of every slot of `groups` for one block.
  static int64_t bytes_per_block(const ModelConfig& config, int64_t block_size,
                                 const KvCacheGroups& groups);
};

// One sequence's view of a CpuKvPool: position p of layer l lives in block
// tables[g][p / block_size] at slot p % block_size, g the layer's group. Throws l2kv::Error
// when a block id is outside the pool, the tables do not match the pool's groups, or a table
// does not cover a position asked for.
class CpuPagedKvView final : public CpuKvCache {
 public:
  CpuPagedKvView(CpuKvPool& pool, std::span<const std::span<const int32_t>> tables);
  // A pool of one group.
  CpuPagedKvView(CpuKvPool& pool, std::span<const int32_t> block_table);
  void reserve(int64_t length) override;
  float* key(int64_t layer, int64_t position) override;
  float* value(int64_t layer, int64_t position) override;

 private:
  int64_t offset(int64_t layer, int64_t position) const;
  CpuKvPool& pool_;
  std::vector<std::span<const int32_t>> tables_;  // [group]
};

class CpuModel {
 public:
  // Loads config.json and the safetensors weights of `folder` (converted to float32).
  // Throws l2kv::Error naming the file and tensor for any missing or mis-shaped weight.
  explicit CpuModel(const std::filesystem::path& folder);
  // Rank comm.rank() of comm.size() of it (tp_shard): only that shard's slices are loaded, its
  // KV holds only the shard's KV heads, and every forward is a collective over `comm` (the O and
  // down projections' partial sums are all-reduced, the LM head's parts of the logits gathered),
  // so each rank of `comm` must run the same calls with the same tokens; each returns the whole
  // logits. `comm` must outlive the model. Throws l2kv::Error, before reading any weight, for a
  // split tp_shard() refuses.
  CpuModel(const std::filesystem::path& folder, Communicator& comm);

  const ModelConfig& config() const { return config_; }
  // fp8 checkpoints as the CUDA backend runs forwards of more than `rows` tokens (W8A8,
  // Gemm::linear_fp8): each fp8 projection's input rows rounded to the model's dtype and
  // quantized per token to E4M3 (scale max|row| / 448) before the product. Negative (the
  // default): never; the dequantized weights times float32 activations.
  void set_fp8_activation_rows(int64_t rows) { fp8_activation_rows_ = rows; }
  // The KV heads this model keeps (a tensor-parallel rank's, else the config's).
  int64_t kv_heads() const { return kv_heads_; }
  // True for one rank of a tensor-parallel model (its forwards are collectives).
  bool tensor_parallel() const { return comm_ != nullptr; }

  // Runs `tokens` at positions state.length, state.length + 1, ... attending to everything
  // cached before them (prefill of a prompt or a chunk of it, or one decode step), appends
  // their keys and values to `state`, and returns their logits [tokens.size(), vocab_size].
  std::vector<float> extend(CpuSequenceState& state, std::span<const int32_t> tokens) const;

  // The same over any KV layout: runs `tokens` at positions start_position, start_position + 1,
  // ..., attending to positions [0, start_position) already in `cache`, and writes their keys
  // and values into `cache`. Logits only of rows [first_logit_row, tokens.size()) (none when it
  // is past the last): the LM head is most of a long chunk's work and memory.
  std::vector<float> extend(CpuKvCache& cache, int64_t start_position,
                            std::span<const int32_t> tokens, int64_t first_logit_row = 0) const;

  // What extend() refuses of a chunk (no tokens, a negative start, a token outside the
  // vocabulary), as the l2kv::Error it throws; for callers that must refuse it before starting.
  void check_chunk(int64_t start_position, std::span<const int32_t> tokens) const;

  // Logits of `tokens` as one fresh sequence (extend on an empty state).
  std::vector<float> forward(std::span<const int32_t> tokens) const;

  // `steps` tokens chosen greedily after `prompt`: one prefill, then one decode step per token.
  std::vector<int32_t> greedy(std::span<const int32_t> prompt, int steps) const;

 private:
  using Layer = HfLayerWeights;  // the checkpoint's float32 tensors, used as they are
  struct GraphOps;               // this backend's ops of decoder_graph.h
  CpuModel(const std::filesystem::path& folder, Communicator* comm);
  ModelConfig config_;
  // What this model computes: the whole model, or a tensor-parallel rank's part of it.
  std::optional<TpShard> shard_;
  Communicator* comm_ = nullptr;
  int64_t q_heads_ = 0, kv_heads_ = 0, inter_ = 0;  // attention heads, KV heads, MLP features
  int64_t fp8_activation_rows_ = -1;                // set_fp8_activation_rows
  int64_t vocab_begin_ = 0, vocab_ = 0;             // the LM head's rows
  std::vector<float> embed_;                        // [vocab, hidden]
  std::vector<float> lm_head_;  // [vocab_, hidden]; empty when tied to embed_ (and whole)
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;
  std::vector<float> local_inv_freq_;  // sliding-window layers' RoPE (Gemma 3)
};

}  // namespace l2kv
