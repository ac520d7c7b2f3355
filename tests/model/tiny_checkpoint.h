// Small random checkpoints written by the tests themselves (config.json and one float32
// model.safetensors), for checks that need no transformers fixture: a new architecture's
// arithmetic against a direct computation, or a tensor left out on purpose.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "l2kv/core/dtype.h"
#include "model/safetensors_writer.h"

namespace l2kv::testing {

struct TinyTensor {
  std::vector<int64_t> shape;
  std::vector<float> values;
  std::vector<uint8_t> fp8_codes;  // when set: written as F8_E4M3 (values unused)
};
using TinyTensors = std::map<std::string, TinyTensor>;

// `n` values uniform in [lo, hi) from `rng`.
inline std::vector<float> uniform_values(std::mt19937& rng, int64_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = dist(rng);
  return v;
}

// Writes `dir`/config.json and `dir`/model.safetensors (F32 tensors, F8_E4M3 where fp8_codes
// are set) into a fresh `dir`.
inline void write_tiny_checkpoint(const std::filesystem::path& dir, const nlohmann::json& config,
                                  const TinyTensors& tensors) {
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << config.dump(1);
  nlohmann::json header = nlohmann::json::object();
  std::vector<char> data;
  for (const auto& [name, t] : tensors) {
    const bool fp8 = !t.fp8_codes.empty();
    const size_t bytes = fp8 ? t.fp8_codes.size() : t.values.size() * sizeof(float);
    header[name] = {{"dtype", fp8 ? "F8_E4M3" : "F32"},
                    {"shape", t.shape},
                    {"data_offsets", {data.size(), data.size() + bytes}}};
    const auto* p = fp8 ? reinterpret_cast<const char*>(t.fp8_codes.data())
                        : reinterpret_cast<const char*>(t.values.data());
    data.insert(data.end(), p, p + bytes);
  }
  write_safetensors(dir / "model.safetensors", header, data.data(), data.size());
}

// The config and random weights of a tiny Qwen3ForCausalLM: head_dim given and unlike
// hidden / heads, GQA, tied embeddings, no QKV bias, q/k norm weights away from 1 and q/k
// projections large enough that the per-head norm changes the result. Projection ranges scale
// as 1 / sqrt(hidden), relative to a hidden size of 12.
struct TinyQwen3 {
  nlohmann::json config;
  TinyTensors tensors;
};

inline TinyQwen3 tiny_qwen3(uint32_t seed, int64_t hidden = 12, int64_t heads = 3,
                            int64_t kv_heads = 1, int64_t head_dim = 6, int64_t layers = 2,
                            int64_t vocab = 16, int64_t inter = 8) {
  TinyQwen3 m;
  m.config = {{"architectures", {"Qwen3ForCausalLM"}},
              {"model_type", "qwen3"},
              {"vocab_size", vocab},
              {"hidden_size", hidden},
              {"intermediate_size", inter},
              {"num_hidden_layers", layers},
              {"num_attention_heads", heads},
              {"num_key_value_heads", kv_heads},
              {"head_dim", head_dim},
              {"rms_norm_eps", 1e-6},
              {"rope_theta", 1000000.0},
              {"attention_bias", false},
              {"use_sliding_window", false},
              {"sliding_window", nullptr},
              {"tie_word_embeddings", true},
              {"max_position_embeddings", 64},
              {"hidden_act", "silu"},
              {"torch_dtype", "bfloat16"}};
  std::mt19937 rng(seed);
  const float k = std::sqrt(12.f / static_cast<float>(hidden));
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    m.tensors[name] = {shape, uniform_values(rng, n, lo, hi), {}};
  };
  const int64_t q_dim = heads * head_dim, kv_dim = kv_heads * head_dim;
  add("model.embed_tokens.weight", {vocab, hidden}, -1.f, 1.f);
  add("model.norm.weight", {hidden}, 0.5f, 1.5f);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {hidden}, 0.5f, 1.5f);
    add(p + "post_attention_layernorm.weight", {hidden}, 0.5f, 1.5f);
    add(p + "self_attn.q_proj.weight", {q_dim, hidden}, -2.f * k, 2.f * k);
    add(p + "self_attn.k_proj.weight", {kv_dim, hidden}, -2.f * k, 2.f * k);
    add(p + "self_attn.v_proj.weight", {kv_dim, hidden}, -0.5f * k, 0.5f * k);
    add(p + "self_attn.o_proj.weight", {hidden, q_dim}, -0.5f * k, 0.5f * k);
    add(p + "self_attn.q_norm.weight", {head_dim}, 0.25f, 2.f);
    add(p + "self_attn.k_norm.weight", {head_dim}, 0.25f, 2.f);
    add(p + "mlp.gate_proj.weight", {inter, hidden}, -0.5f * k, 0.5f * k);
    add(p + "mlp.up_proj.weight", {inter, hidden}, -0.5f * k, 0.5f * k);
    add(p + "mlp.down_proj.weight", {hidden, inter}, -0.5f * k, 0.5f * k);
  }
  return m;
}

// `m` (a tiny_qwen3 of any shape) as a Qwen3MoeForCausalLM: per layer a router over `experts`
// SwiGLU experts of `expert_inter` (mlp.gate.weight, mlp.experts.N.{gate,up,down}_proj.weight),
// `top_k` per token, their weights drawn from `seed`. The router's range is wide enough that
// its top-k choice changes between tokens.
inline TinyQwen3 with_experts(TinyQwen3 m, uint32_t seed, int64_t experts, int64_t top_k,
                              int64_t expert_inter, bool norm_topk_prob) {
  const int64_t hidden = m.config["hidden_size"], layers = m.config["num_hidden_layers"];
  m.config["architectures"] = {"Qwen3MoeForCausalLM"};
  m.config["model_type"] = "qwen3_moe";
  m.config["num_experts"] = experts;
  m.config["num_experts_per_tok"] = top_k;
  m.config["moe_intermediate_size"] = expert_inter;
  m.config["norm_topk_prob"] = norm_topk_prob;
  m.config["decoder_sparse_step"] = 1;
  m.config["mlp_only_layers"] = nlohmann::json::array();
  std::mt19937 rng(seed + 1000);
  const float k = std::sqrt(12.f / static_cast<float>(hidden));
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
    for (const char* dense : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"})
      m.tensors.erase(p + dense);
    m.tensors[p + "gate.weight"] = {
        {experts, hidden}, uniform_values(rng, experts * hidden, -2.f * k, 2.f * k), {}};
    for (int64_t e = 0; e < experts; ++e) {
      const std::string x = p + "experts." + std::to_string(e) + ".";
      m.tensors[x + "gate_proj.weight"] = {
          {expert_inter, hidden}, uniform_values(rng, expert_inter * hidden, -k, k), {}};
      m.tensors[x + "up_proj.weight"] = {
          {expert_inter, hidden}, uniform_values(rng, expert_inter * hidden, -k, k), {}};
      m.tensors[x + "down_proj.weight"] = {
          {hidden, expert_inter}, uniform_values(rng, hidden * expert_inter, -k, k), {}};
    }
  }
  return m;
}

// A tiny Qwen3MoeForCausalLM on tiny_qwen3's default shape.
inline TinyQwen3 tiny_qwen3_moe(uint32_t seed, int64_t experts = 4, int64_t top_k = 2,
                                int64_t expert_inter = 6, bool norm_topk_prob = true) {
  return with_experts(tiny_qwen3(seed), seed, experts, top_k, expert_inter, norm_topk_prob);
}

// The same experts under Mixtral's names (block_sparse_moe.gate, experts.N.w1 / w3 / w2) and
// config, without the q/k norm (Mixtral has none): a MixtralForCausalLM of equal arithmetic
// to the Qwen3-MoE one with norm_topk_prob and no q/k norm.
inline TinyQwen3 as_mixtral(const TinyQwen3& qwen) {
  TinyQwen3 m;
  m.config = qwen.config;
  m.config["architectures"] = {"MixtralForCausalLM"};
  m.config["model_type"] = "mixtral";
  m.config["num_local_experts"] = qwen.config["num_experts"];
  m.config["intermediate_size"] = qwen.config["moe_intermediate_size"];
  for (const char* key : {"num_experts", "moe_intermediate_size", "norm_topk_prob",
                          "decoder_sparse_step", "mlp_only_layers", "head_dim"})
    m.config.erase(key);
  m.config["head_dim"] = qwen.config["head_dim"];
  for (const auto& [name, t] : qwen.tensors) {
    if (name.find("q_norm") != std::string::npos || name.find("k_norm") != std::string::npos)
      continue;
    std::string n = name;
    auto swap = [&](const std::string& from, const std::string& to) {
      if (const size_t at = n.find(from); at != std::string::npos) n.replace(at, from.size(), to);
    };
    swap(".mlp.", ".block_sparse_moe.");
    swap("gate_proj", "w1");
    swap("up_proj", "w3");
    swap("down_proj", "w2");
    m.tensors[n] = t;
  }
  return m;
}

// The fp8 form of a tiny checkpoint, as compressed-tensors writes one: every decoder
// projection's weight quantized to E4M3 with a scale of max |row| / 448 per output row
// (`per_channel`) or max |W| / 448 per tensor, stored as weight_scale; the rest unchanged.
// `dequantized` receives the same model with those weights multiplied back out in float32
// (code value times scale, as the loader computes it): the reference an fp8 loader must match.
struct Fp8Twins {
  nlohmann::json config;
  TinyTensors quantized, dequantized;
};

inline Fp8Twins fp8_twins(const nlohmann::json& config, const TinyTensors& tensors,
                          bool per_channel) {
  Fp8Twins t{config, {}, {}};
  t.config["quantization_config"] = {
      {"quant_method", "compressed-tensors"},
      {"format", "float-quantized"},
      {"ignore", {"lm_head"}},
      {"config_groups",
       {{"group_0",
         {{"targets", {"Linear"}},
          {"weights",
           {{"num_bits", 8},
            {"type", "float"},
            {"strategy", per_channel ? "channel" : "tensor"},
            {"symmetric", true},
            {"dynamic", false}}},
          {"input_activations",
           {{"num_bits", 8}, {"type", "float"}, {"strategy", "token"}, {"dynamic", true}}}}}}}};
  const std::string suffix = "_proj.weight";
  for (const auto& [name, w] : tensors) {
    const bool projection = name.size() > suffix.size() &&
                            name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    if (!projection) {
      t.quantized[name] = w;
      t.dequantized[name] = w;
      continue;
    }
    const int64_t rows = w.shape[0], cols = w.shape[1];
    std::vector<float> scales(static_cast<size_t>(rows));
    float all = 0;
    for (int64_t r = 0; r < rows; ++r) {
      float m = 0;
      for (int64_t c = 0; c < cols; ++c) m = std::max(m, std::abs(w.values[r * cols + c]));
      scales[static_cast<size_t>(r)] = m / 448.f;
      all = std::max(all, m / 448.f);
    }
    if (!per_channel) std::fill(scales.begin(), scales.end(), all);
    TinyTensor codes{w.shape, {}, std::vector<uint8_t>(w.values.size())};
    TinyTensor back{w.shape, std::vector<float>(w.values.size()), {}};
    for (size_t i = 0; i < w.values.size(); ++i) {
      const float s = scales[i / static_cast<size_t>(cols)];
      codes.fp8_codes[i] = float_to_fp8_e4m3_bits(w.values[i] / s);
      back.values[i] = fp8_e4m3_bits_to_float(codes.fp8_codes[i]) * s;
    }
    t.quantized[name] = codes;
    const std::string scale_name = name.substr(0, name.size() - 6) + "weight_scale";
    t.quantized[scale_name] =
        per_channel ? TinyTensor{{rows, 1}, scales, {}} : TinyTensor{{1}, {scales[0]}, {}};
    t.dequantized[name] = back;
  }
  return t;
}

}  // namespace l2kv::testing
