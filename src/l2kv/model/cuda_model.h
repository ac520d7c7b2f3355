// The CUDA backend: the same graph as CpuModel on the GPU, 16-bit weights and activations in
// the checkpoint's dtype (fp16 or bf16) with an fp32 residual stream, K/V written to a paged cache
// (HND, block 16) and attention by l2kv's split decode kernel. One call runs a batch of sequences
// of different lengths.
//
// Attention: batches where every sequence adds one token run the split decode kernel; batches
// with prompt chunks run the tensor-core prefill kernel (causal over each chunk's prefix).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "l2kv/kernels/attention/prefill_attention.h"
#include "l2kv/kernels/attention/split_decode.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/model/model_config.h"

namespace l2kv {

// Host-side bookkeeping of one sequence in the paged cache.
struct CudaSequence {
  std::vector<int32_t> blocks;  // physical KV blocks, in order
  int32_t length = 0;           // tokens cached
};

class CudaModel {
 public:
  static constexpr int32_t kBlockSize = 16;

  // Weights from a Hugging Face folder (converted to bf16), or random ones in `config`'s shapes
  // (synthetic models). `kv_blocks` is the size of the paged KV pool of each layer.
  CudaModel(const std::filesystem::path& folder, int32_t kv_blocks);
  CudaModel(const ModelConfig& config, uint64_t seed, int32_t kv_blocks);
  ~CudaModel();
  CudaModel(const CudaModel&) = delete;
  CudaModel& operator=(const CudaModel&) = delete;

  const ModelConfig& config() const { return config_; }

  // Runs tokens[i] for sequence *sequences[i] after what it has cached, appending their K/V.
  // Returns logits [sum of tokens, vocab] (all_logits) or [sequences, vocab] for the last token
  // of each. Throws l2kv::Error when the KV pool runs out (nothing is appended then).
  std::vector<float> extend(std::span<CudaSequence* const> sequences,
                            std::span<const std::vector<int32_t>> tokens, bool all_logits,
                            cudaStream_t stream);

  // Returns a finished sequence's blocks to the pool.
  void release(CudaSequence& sequence);

  // With profiling on, extend() times its projections and its attention with CUDA events.
  struct OpTimes {
    double gemm_ms = 0, attention_ms = 0, total_ms = 0;
  };
  void set_profiling(bool on) { profiling_ = on; }
  const OpTimes& last_op_times() const { return op_times_; }

 private:
  struct Weights;
  struct GraphOps;  // this backend's ops of decoder_graph.h
  void allocate_cache(int32_t kv_blocks);

  ModelConfig config_;
  std::unique_ptr<Weights> weights_;
  std::vector<void*> k_pools_, v_pools_;
  std::vector<int32_t> free_blocks_;
  int32_t kv_blocks_ = 0;
  float* inv_freq_ = nullptr;
  Gemm gemm_;
  SplitDecode attention_;
  PrefillAttention prefill_;
  bool profiling_ = false;
  OpTimes op_times_;
};

}  // namespace l2kv
