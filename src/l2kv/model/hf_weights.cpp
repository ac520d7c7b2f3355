#include "l2kv/model/hf_weights.h"

#include <cmath>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {

HfGlobalWeights load_hf_global_weights(const Checkpoint& checkpoint, const ModelConfig& c) {
  HfGlobalWeights w;
  w.embed = checkpoint.get("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}).to_float();
  if (!c.tie_word_embeddings)
    w.lm_head = checkpoint.get("lm_head.weight", {c.vocab_size, c.hidden_size}).to_float();
  w.final_norm = checkpoint.get("model.norm.weight", {c.hidden_size}).to_float();
  return w;
}

HfLayerWeights load_hf_layer_weights(const Checkpoint& checkpoint, const ModelConfig& c,
                                     int64_t layer) {
  const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  auto load = [&](const std::string& name, std::vector<int64_t> shape) {
    return checkpoint.get(p + name, shape).to_float();
  };
  HfLayerWeights w;
  w.input_norm = load("input_layernorm.weight", {c.hidden_size});
  w.post_attention_norm = load("post_attention_layernorm.weight", {c.hidden_size});
  w.q = load("self_attn.q_proj.weight", {q_dim, c.hidden_size});
  w.k = load("self_attn.k_proj.weight", {kv_dim, c.hidden_size});
  w.v = load("self_attn.v_proj.weight", {kv_dim, c.hidden_size});
  w.o = load("self_attn.o_proj.weight", {c.hidden_size, q_dim});
  if (c.qkv_bias) {
    w.q_bias = load("self_attn.q_proj.bias", {q_dim});
    w.k_bias = load("self_attn.k_proj.bias", {kv_dim});
    w.v_bias = load("self_attn.v_proj.bias", {kv_dim});
  }
  if (c.qk_norm) {
    w.q_norm = load("self_attn.q_norm.weight", {c.head_dim});
    w.k_norm = load("self_attn.k_norm.weight", {c.head_dim});
  }
  w.gate = load("mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size});
  w.up = load("mlp.up_proj.weight", {c.intermediate_size, c.hidden_size});
  w.down = load("mlp.down_proj.weight", {c.hidden_size, c.intermediate_size});
  auto scale = [&](const std::string& name) {
    const TensorView* t = checkpoint.find(p + name);
    if (t == nullptr) return 1.f;
    if (t->elements() != 1) throw Error(p + name + ": expected one value");
    const float v = t->to_float()[0];
    if (!std::isfinite(v) || v <= 0) throw Error(p + name + ": expected a positive finite scale");
    return v;
  };
  w.k_scale = scale("self_attn.k_scale");
  w.v_scale = scale("self_attn.v_scale");
  w.has_kv_scales =
      checkpoint.contains(p + "self_attn.k_scale") && checkpoint.contains(p + "self_attn.v_scale");
  return w;
}

}  // namespace l2kv
