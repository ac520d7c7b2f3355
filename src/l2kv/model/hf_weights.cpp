#include "l2kv/model/hf_weights.h"

#include <cmath>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

// Gemma's RMSNorm scales by 1 + weight (in float32, as transformers): the 1 is folded in here,
// so every backend's norm multiplies by the weight alone.
void fold_gemma_norm(const ModelConfig& c, std::vector<float>& weight) {
  if (c.gemma)
    for (float& x : weight) x = 1.f + x;
}

}  // namespace

HfGlobalWeights load_hf_global_weights(const Checkpoint& checkpoint, const ModelConfig& c,
                                       const TpShard* shard) {
  HfGlobalWeights w;
  const TensorView& embed =
      checkpoint.get("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  w.embed = embed.to_float();
  if (shard != nullptr) {
    const TensorView& head = c.tie_word_embeddings
                                 ? embed
                                 : checkpoint.get("lm_head.weight", {c.vocab_size, c.hidden_size});
    w.lm_head = head.to_float(shard->vocab_begin, shard->vocab, 0, c.hidden_size);
  } else if (!c.tie_word_embeddings) {
    w.lm_head = checkpoint.get("lm_head.weight", {c.vocab_size, c.hidden_size}).to_float();
  }
  w.final_norm = checkpoint.get("model.norm.weight", {c.hidden_size}).to_float();
  fold_gemma_norm(c, w.final_norm);
  return w;
}

HfLayerWeights load_hf_layer_weights(const Checkpoint& checkpoint, const ModelConfig& c,
                                     int64_t layer, Fp8Projections fp8, const TpShard* shard) {
  if (shard != nullptr && (c.num_experts > 0 || c.gemma))
    throw Error(c.architecture + ": tensor-parallel loading covers dense models only");
  const int64_t D = c.head_dim, q_dim = c.num_q_heads * D, kv_dim = c.num_kv_heads * D;
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  auto load = [&](const std::string& name, std::vector<int64_t> shape) {
    return checkpoint.get(p + name, shape).to_float();
  };
  // The part of a tensor this rank reads: rows [row_begin, + rows), columns [col_begin, + cols).
  struct Slice {
    int64_t row_begin, rows, col_begin, cols;
  };
  auto whole = [](int64_t out, int64_t in) { return Slice{0, out, 0, in}; };
  // Column-parallel (rows of the rank) and row-parallel (columns of the rank) slices.
  auto rows_of = [&](int64_t out, int64_t in, int64_t begin, int64_t count) {
    return shard ? Slice{begin, count, 0, in} : whole(out, in);
  };
  auto cols_of = [&](int64_t out, int64_t in, int64_t begin, int64_t count) {
    return shard ? Slice{0, out, begin, count} : whole(out, in);
  };
  auto load_slice = [&](const std::string& name, std::vector<int64_t> shape, const Slice& s) {
    return checkpoint.get(p + name, shape).to_float(s.row_begin, s.rows, s.col_begin, s.cols);
  };
  // A projection [out, in] (the rank's slice of it): float32, or for an fp8 checkpoint its codes
  // and row scales (kept, or multiplied out into float32).
  auto projection = [&](const std::string& name, int64_t out, int64_t in, const Slice& slice,
                        std::vector<float>& f32, HfFp8Projection& stored, Fp8Projections mode) {
    if (!c.fp8_weights) {
      f32 = load_slice(name + ".weight", {out, in}, slice);
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
    stored.row_scales.resize(static_cast<size_t>(slice.rows));
    for (int64_t r = 0; r < slice.rows; ++r)
      stored.row_scales[static_cast<size_t>(r)] =
          s[s.size() == 1 ? 0 : static_cast<size_t>(slice.row_begin + r)];
    stored.codes = weight.bytes_of(slice.row_begin, slice.rows, slice.col_begin, slice.cols);
    if (mode == Fp8Projections::kAsStored) return;
    const std::vector<float> values =
        weight.to_float(slice.row_begin, slice.rows, slice.col_begin, slice.cols);
    f32.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i)
      f32[i] = values[i] * stored.row_scales[i / static_cast<size_t>(slice.cols)];
    stored = {};
  };
  HfLayerWeights w;
  w.input_norm = load("input_layernorm.weight", {c.hidden_size});
  w.post_attention_norm = load("post_attention_layernorm.weight", {c.hidden_size});
  if (c.gemma) {
    w.pre_feedforward_norm = load("pre_feedforward_layernorm.weight", {c.hidden_size});
    w.post_feedforward_norm = load("post_feedforward_layernorm.weight", {c.hidden_size});
  }
  const int64_t H = c.hidden_size;
  // The rank's q and KV rows (all of them without a shard).
  const int64_t q_begin = shard ? shard->q_head_begin * D : 0;
  const int64_t q_rows = shard ? shard->q_heads * D : q_dim;
  const int64_t kv_begin = shard ? shard->kv_head_begin * D : 0;
  const int64_t kv_rows = shard ? shard->kv_heads * D : kv_dim;
  projection("self_attn.q_proj", q_dim, H, rows_of(q_dim, H, q_begin, q_rows), w.q, w.q8, fp8);
  projection("self_attn.k_proj", kv_dim, H, rows_of(kv_dim, H, kv_begin, kv_rows), w.k, w.k8, fp8);
  projection("self_attn.v_proj", kv_dim, H, rows_of(kv_dim, H, kv_begin, kv_rows), w.v, w.v8, fp8);
  projection("self_attn.o_proj", H, q_dim, cols_of(H, q_dim, q_begin, q_rows), w.o, w.o8, fp8);
  if (c.qkv_bias) {
    w.q_bias = load_slice("self_attn.q_proj.bias", {q_dim}, Slice{0, 1, q_begin, q_rows});
    w.k_bias = load_slice("self_attn.k_proj.bias", {kv_dim}, Slice{0, 1, kv_begin, kv_rows});
    w.v_bias = load_slice("self_attn.v_proj.bias", {kv_dim}, Slice{0, 1, kv_begin, kv_rows});
  }
  if (c.qk_norm) {
    w.q_norm = load("self_attn.q_norm.weight", {c.head_dim});
    w.k_norm = load("self_attn.k_norm.weight", {c.head_dim});
  }
  if (c.num_experts > 0) {
    const bool mixtral = c.architecture == "MixtralForCausalLM";
    const std::string moe = mixtral ? "block_sparse_moe." : "mlp.";
    const int64_t I = c.expert_intermediate_size;
    // fp8 checkpoints: the experts (and a router, where quantized too) are dequantized here on
    // both backends: float32 on the CPU, 16 bits on the GPU (no fp8 expert kernel yet).
    auto dequantized = [&](const std::string& name, int64_t out, int64_t in) {
      const bool fp8_tensor =
          c.fp8_weights &&
          checkpoint.get(p + name + ".weight", {out, in}).dtype == TensorDType::kF8E4M3;
      if (!fp8_tensor) return load(name + ".weight", {out, in});
      std::vector<float> f32;
      HfFp8Projection unused;
      projection(name, out, in, whole(out, in), f32, unused, Fp8Projections::kDequantized);
      return f32;
    };
    w.router = dequantized(moe + "gate", c.num_experts, c.hidden_size);
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const std::string x = moe + "experts." + std::to_string(e) + ".";
      w.expert_gate.push_back(dequantized(x + (mixtral ? "w1" : "gate_proj"), I, c.hidden_size));
      w.expert_up.push_back(dequantized(x + (mixtral ? "w3" : "up_proj"), I, c.hidden_size));
      w.expert_down.push_back(dequantized(x + (mixtral ? "w2" : "down_proj"), c.hidden_size, I));
    }
  } else {
    const int64_t I = c.intermediate_size;
    const int64_t i_begin = shard ? shard->inter_begin : 0, i_count = shard ? shard->inter : I;
    projection("mlp.gate_proj", I, H, rows_of(I, H, i_begin, i_count), w.gate, w.gate8, fp8);
    projection("mlp.up_proj", I, H, rows_of(I, H, i_begin, i_count), w.up, w.up8, fp8);
    projection("mlp.down_proj", H, I, cols_of(H, I, i_begin, i_count), w.down, w.down8, fp8);
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
  for (auto* norm : {&w.input_norm, &w.post_attention_norm, &w.pre_feedforward_norm,
                     &w.post_feedforward_norm, &w.q_norm, &w.k_norm})
    fold_gemma_norm(c, *norm);
  return w;
}

}  // namespace l2kv
