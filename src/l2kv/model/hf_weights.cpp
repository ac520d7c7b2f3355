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
                                     int64_t layer, Fp8Projections fp8) {
  const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  auto load = [&](const std::string& name, std::vector<int64_t> shape) {
    return checkpoint.get(p + name, shape).to_float();
  };
  // A projection [out, in]: float32, or for an fp8 checkpoint its codes and row scales (kept,
  // or multiplied out into float32).
  auto projection = [&](const std::string& name, int64_t out, int64_t in, std::vector<float>& f32,
                        HfFp8Projection& stored) {
    if (!c.fp8_weights) {
      f32 = load(name + ".weight", {out, in});
      return;
    }
    const TensorView& weight = checkpoint.get(p + name + ".weight", {out, in});
    if (weight.dtype != TensorDType::kF8E4M3)
      throw Error(p + name + ".weight has dtype " + weight.dtype_name +
                  "; the config's quantization_config says F8_E4M3");
    const TensorView* scale = checkpoint.find(p + name + ".weight_scale");
    if (scale == nullptr)
      throw Error(p + name + ".weight_scale is missing (fp8 weights need their scales)");
    const std::vector<float> s = scale->to_float();
    if (static_cast<int64_t>(s.size()) != out && s.size() != 1)
      throw Error(p + name + ".weight_scale holds " + std::to_string(s.size()) +
                  " values; expected one per output row (" + std::to_string(out) +
                  ") or one in all");
    for (float v : s)
      if (!std::isfinite(v) || v <= 0)
        throw Error(p + name + ".weight_scale: expected positive finite scales");
    stored.row_scales.resize(static_cast<size_t>(out));
    for (int64_t r = 0; r < out; ++r)
      stored.row_scales[static_cast<size_t>(r)] = s[s.size() == 1 ? 0 : static_cast<size_t>(r)];
    stored.codes.assign(weight.data, weight.data + weight.bytes);
    if (fp8 == Fp8Projections::kAsStored) return;
    const std::vector<float> values = weight.to_float();
    f32.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i)
      f32[i] = values[i] * stored.row_scales[i / static_cast<size_t>(in)];
    stored = {};
  };
  HfLayerWeights w;
  w.input_norm = load("input_layernorm.weight", {c.hidden_size});
  w.post_attention_norm = load("post_attention_layernorm.weight", {c.hidden_size});
  if (c.gemma) {
    w.pre_feedforward_norm = load("pre_feedforward_layernorm.weight", {c.hidden_size});
    w.post_feedforward_norm = load("post_feedforward_layernorm.weight", {c.hidden_size});
  }
  projection("self_attn.q_proj", q_dim, c.hidden_size, w.q, w.q8);
  projection("self_attn.k_proj", kv_dim, c.hidden_size, w.k, w.k8);
  projection("self_attn.v_proj", kv_dim, c.hidden_size, w.v, w.v8);
  projection("self_attn.o_proj", c.hidden_size, q_dim, w.o, w.o8);
  if (c.qkv_bias) {
    w.q_bias = load("self_attn.q_proj.bias", {q_dim});
    w.k_bias = load("self_attn.k_proj.bias", {kv_dim});
    w.v_bias = load("self_attn.v_proj.bias", {kv_dim});
  }
  if (c.qk_norm) {
    w.q_norm = load("self_attn.q_norm.weight", {c.head_dim});
    w.k_norm = load("self_attn.k_norm.weight", {c.head_dim});
  }
  if (c.num_experts > 0) {
    const bool mixtral = c.architecture == "MixtralForCausalLM";
    const std::string moe = mixtral ? "block_sparse_moe." : "mlp.";
    const int64_t I = c.expert_intermediate_size;
    w.router = load(moe + "gate.weight", {c.num_experts, c.hidden_size});
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const std::string x = moe + "experts." + std::to_string(e) + ".";
      w.expert_gate.push_back(
          load(x + (mixtral ? "w1" : "gate_proj") + ".weight", {I, c.hidden_size}));
      w.expert_up.push_back(load(x + (mixtral ? "w3" : "up_proj") + ".weight", {I, c.hidden_size}));
      w.expert_down.push_back(
          load(x + (mixtral ? "w2" : "down_proj") + ".weight", {c.hidden_size, I}));
    }
  } else {
    projection("mlp.gate_proj", c.intermediate_size, c.hidden_size, w.gate, w.gate8);
    projection("mlp.up_proj", c.intermediate_size, c.hidden_size, w.up, w.up8);
    projection("mlp.down_proj", c.hidden_size, c.intermediate_size, w.down, w.down8);
  }
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
