// The CPU backend: a float32 forward pass of a Llama / Mistral / Qwen2 checkpoint, written for
// clarity. It is the reference the CUDA backend is tested against and what CI runs end to end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

#include "l2kv/model/model_config.h"

namespace l2kv {

// The keys and values one sequence has cached, per layer: [position][kv_heads * head_dim].
struct CpuSequenceState {
  std::vector<std::vector<float>> keys, values;
  int64_t length = 0;  // positions cached
};

class CpuModel {
 public:
  // Loads config.json and the safetensors weights of `folder` (converted to float32).
  // Throws l2kv::Error naming the file and tensor for any missing or mis-shaped weight.
  explicit CpuModel(const std::filesystem::path& folder);

  const ModelConfig& config() const { return config_; }

  // Runs `tokens` at positions state.length, state.length + 1, ... attending to everything
  // cached before them (prefill of a prompt or a chunk of it, or one decode step), appends
  // their keys and values to `state`, and returns their logits [tokens.size(), vocab_size].
  std::vector<float> extend(CpuSequenceState& state, std::span<const int32_t> tokens) const;

  // Logits of `tokens` as one fresh sequence (extend on an empty state).
  std::vector<float> forward(std::span<const int32_t> tokens) const;

  // `steps` tokens chosen greedily after `prompt`: one prefill, then one decode step per token.
  std::vector<int32_t> greedy(std::span<const int32_t> prompt, int steps) const;

 private:
  struct Layer {
    std::vector<float> input_norm, post_attention_norm;
    std::vector<float> q, k, v, o;              // [out, in]
    std::vector<float> q_bias, k_bias, v_bias;  // empty without QKV bias
    std::vector<float> gate, up, down;
  };
  struct GraphOps;  // this backend's ops of decoder_graph.h
  ModelConfig config_;
  std::vector<float> embed_;    // [vocab, hidden]
  std::vector<float> lm_head_;  // [vocab, hidden]; empty when tied to embed_
  std::vector<float> final_norm_;
  std::vector<Layer> layers_;
  std::vector<float> inv_freq_;
};

}  // namespace l2kv
