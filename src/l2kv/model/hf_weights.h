// The tensors of a Hugging Face Llama / Mistral / Qwen2 / Qwen3 checkpoint under their Hub names,
// read once for every backend (each converts them to its own layout and precision). Shapes are
// checked against the config; a missing or mis-shaped tensor is an l2kv::Error naming it.
#pragma once

#include <cstdint>
#include <vector>

#include "l2kv/model/model_config.h"
#include "l2kv/model/safetensors.h"

namespace l2kv {

// Embedding, final norm and (when untied) LM head, as float32.
struct HfGlobalWeights {
  std::vector<float> embed;       // model.embed_tokens.weight [vocab, hidden]
  std::vector<float> lm_head;     // lm_head.weight [vocab, hidden]; empty when tied
  std::vector<float> final_norm;  // model.norm.weight [hidden]
};

// One decoder layer (model.layers.N.*), as float32; projections are [out, in].
struct HfLayerWeights {
  std::vector<float> input_norm, post_attention_norm;
  std::vector<float> q, k, v, o;
  std::vector<float> q_bias, k_bias, v_bias;  // empty without QKV bias
  std::vector<float> q_norm, k_norm;          // [head_dim] each (Qwen3); empty without qk_norm
  std::vector<float> gate, up, down;
  // fp8 KV cache scales (self_attn.k_scale / v_scale, as vLLM's fp8 checkpoints store them);
  // 1 when the checkpoint has none.
  float k_scale = 1.f, v_scale = 1.f;
  bool has_kv_scales = false;  // the checkpoint has both
};

HfGlobalWeights load_hf_global_weights(const Checkpoint& checkpoint, const ModelConfig& config);
// One layer at a time, so a backend holds at most one layer in float32 while it converts.
HfLayerWeights load_hf_layer_weights(const Checkpoint& checkpoint, const ModelConfig& config,
                                     int64_t layer);

}  // namespace l2kv
