// The architecture of a model, read from its config.json (LlamaForCausalLM, MistralForCausalLM
// without sliding window, MixtralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM,
// Qwen3MoeForCausalLM, Gemma3ForCausalLM), or one of the built-in synthetic shapes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "l2kv/core/dtype.h"

namespace l2kv {

enum class RopeType : uint8_t { kDefault, kLlama3, kLinear };

// The MLP's gate activation: SwiGLU's SiLU, or GeGLU's tanh-approximated GELU (Gemma).
enum class MlpActivation : uint8_t { kSilu, kGeluTanh };

struct RopeConfig {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  // llama3 scaling; linear: every frequency divided by `factor`
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // e.g. "LlamaForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_q_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-6;
  bool qkv_bias = false;  // Qwen2
  // Qwen3: RMSNorm over each head of q and of k (weights [head_dim], eps rms_norm_eps) before
  // RoPE.
  bool qk_norm = false;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 0;
  RopeConfig rope;
  // The 16-bit type the GPU computes in: the checkpoint's (config "torch_dtype" or "dtype")
  // when it is float16 or bfloat16; float32 checkpoints run in bfloat16.
  DType dtype = DType::kBFloat16;
  // The projections (QKV, O, gate_up, down) stored as fp8 E4M3 with per-output-channel or
  // per-tensor scales (compressed-tensors or fbgemm_fp8 checkpoints, synthetic "-fp8" shapes);
  // norms, embeddings and the LM head stay in `dtype`. Activations stay 16-bit (W8A16): the CUDA
  // backend widens the weights on the fly, the CPU backend dequantizes them when it loads.
  bool fp8_weights = false;
  // Mixture of experts (MixtralForCausalLM, Qwen3MoeForCausalLM): every layer's MLP is
  // `num_experts` SwiGLU experts of `expert_intermediate_size`, of which a router picks
  // `experts_per_token` per token by softmax probability; their outputs are summed weighted by
  // those probabilities, renormalized to sum 1 when norm_topk_prob. 0 experts: a dense MLP.
  int64_t num_experts = 0;
  int64_t experts_per_token = 0;
  int64_t expert_intermediate_size = 0;
  bool norm_topk_prob = false;
  // Gemma 3 (Gemma3ForCausalLM): every RMSNorm (with q/k norms) scales by 1 + weight; the
  // attention and MLP outputs are normalized (post_attention_layernorm,
  // post_feedforward_layernorm) before their residual adds, the MLP's input by
  // pre_feedforward_layernorm; embeddings are multiplied by sqrt(hidden_size).
  bool gemma = false;
  MlpActivation mlp_activation = MlpActivation::kSilu;
  // Attention scores are q.k * attention_scale (Gemma 3: query_pre_attn_scalar^-0.5); 0 means
  // head_dim^-0.5.
  double attention_scale = 0;
  // Layers with sliding_layer[l] set attend to the last `sliding_window` positions (their own
  // included) and rotate by `local_rope`; the others see everything with `rope`.
  int64_t sliding_window = 0;
  std::vector<uint8_t> sliding_layer;
  RopeConfig local_rope;
  // Soft-capping, cap * tanh(x / cap), of the final logits and of attention scores; 0: none.
  double final_logit_softcapping = 0;
  double attn_logit_softcapping = 0;
  // Tokens that end generation: config.json's eos_token_id (an id or a list, may be absent or
  // null), united with generation_config.json's when the folder has one. Empty for synthetic
  // shapes.
  std::vector<int32_t> eos_token_ids;
  // generation_config.json's sampling settings, the defaults of requests that leave them out
  // (vLLM's --generation-config auto): the fields vLLM reads, each unset when absent or null.
  struct GenerationDefaults {
    std::optional<double> temperature, top_p, min_p, repetition_penalty;
    std::optional<int64_t> top_k;
    std::optional<int64_t> max_new_tokens;  // the default max_tokens
    bool empty() const {
      return !temperature && !top_p && !min_p && !repetition_penalty && !top_k && !max_new_tokens;
    }
  };
  GenerationDefaults generation_defaults;

  // Reads `folder`/config.json (and the EOS ids and sampling defaults of
  // `folder`/generation_config.json if present; an out-of-range default is an error naming it).
  // Accepts rope settings as rope_theta + rope_scaling (the Hub's
  // checkpoints) or as rope_parameters (transformers 5). Throws l2kv::Error for unsupported
  // architectures, rope types, sliding windows or inconsistent sizes.
  static ModelConfig from_folder(const std::filesystem::path& folder);
  static ModelConfig from_json_text(const std::string& text, const std::string& origin);

  // The real shapes of a known model for benchmarks with random weights: "llama2-7b",
  // "llama3-8b", "llama3-70b", "qwen2.5-7b", "qwen2.5-14b", "qwen3-8b" (as in
  // "synthetic:llama3-8b"), each also with fp8 projections as NAME-fp8. Throws l2kv::Error listing
  // the known names otherwise.
  static ModelConfig synthetic(const std::string& name);

  int64_t parameter_count() const;
  // The parameters of the decoder layers' projections an fp8 checkpoint keeps in fp8 (QKV, O,
  // gate_up, down; biases not; a mixture of experts' QKV and O only).
  int64_t projection_parameter_count() const;
  // Bytes of all weights as the backends hold them: projections 1 byte each with fp8_weights
  // (a mixture of experts' experts 2: they are widened at load), else 2.
  int64_t weight_bytes() const;
  bool is_sliding(int64_t layer) const {
    return !sliding_layer.empty() && sliding_layer[static_cast<size_t>(layer)] != 0;
  }
  bool has_sliding_layers() const {
    return std::any_of(sliding_layer.begin(), sliding_layer.end(), [](auto s) { return s != 0; });
  }
};

// Per-pair inverse frequencies of RoPE (head_dim / 2 of them), computed in float32 as
// transformers does, with llama3 or linear scaling applied.
std::vector<float> rope_inverse_frequencies(const RopeConfig& rope, int64_t head_dim);

}  // namespace l2kv
