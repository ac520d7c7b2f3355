// The tensors of a Hugging Face Llama / Mistral / Qwen2 / Qwen3 checkpoint under their Hub names,
// read once for every backend (each converts them to its own layout and precision). Shapes are
// checked against the config; a missing or mis-shaped tensor is an l2kv::Error naming it.
#pragma once

#include <cstdint>
#include <vector>

#include "l2kv/model/model_config.h"
#include "l2kv/model/safetensors.h"
#include "l2kv/parallel/tensor_parallel.h"

namespace l2kv {

// Embedding, final norm and (when untied) LM head, as float32. Norm weights here and below are
// what the norm multiplies by: Gemma's 1 + weight has its 1 folded in.
struct HfGlobalWeights {
  std::vector<float> embed;       // model.embed_tokens.weight [vocab, hidden]
  std::vector<float> lm_head;     // lm_head.weight [vocab, hidden]; empty when tied
  std::vector<float> final_norm;  // model.norm.weight [hidden]
};

// A projection of an fp8 checkpoint as stored: E4M3 codes [out, in] and one scale per row (a
// per-tensor scale repeated).
struct HfFp8Projection {
  std::vector<uint8_t> codes;
  std::vector<float> row_scales;
};

// How load_hf_layer_weights returns the projections of an fp8 checkpoint (config fp8_weights):
// dequantized to float32 like 16-bit ones (the CPU backend), or as stored (the fields *8 below;
// the float fields stay empty).
enum class Fp8Projections : uint8_t { kDequantized, kAsStored };

// One decoder layer (model.layers.N.*), as float32; projections are [out, in].
struct HfLayerWeights {
  std::vector<float> input_norm, post_attention_norm;
  // Gemma 3: the MLP's own norms (post_attention_norm then normalizes the attention output).
  std::vector<float> pre_feedforward_norm, post_feedforward_norm;
  std::vector<float> q, k, v, o;
  std::vector<float> q_bias, k_bias, v_bias;  // empty without QKV bias
  std::vector<float> q_norm, k_norm;          // [head_dim] each (Qwen3); empty without qk_norm
  std::vector<float> gate, up, down;          // empty in a mixture of experts
  // Mixture of experts: the router [experts, hidden] and each expert's gate, up [I_e, hidden]
  // and down [hidden, I_e] (Mixtral's block_sparse_moe.experts.N.w1 / w3 / w2, Qwen3-MoE's
  // mlp.experts.N.gate_proj / up_proj / down_proj).
  std::vector<float> router;
  std::vector<std::vector<float>> expert_gate, expert_up, expert_down;
  HfFp8Projection q8, k8, v8, o8, gate8, up8, down8;  // Fp8Projections::kAsStored
  // fp8 KV cache scales (self_attn.k_scale / v_scale, as vLLM's fp8 checkpoints store them);
  // 1 when the checkpoint has none.
  float k_scale = 1.f, v_scale = 1.f;
  bool has_kv_scales = false;  // the checkpoint has both
};

// With `shard` (tensor_parallel.h), the LM head is the rank's rows only, tied or not (a tied one
// is then a copy of those rows of the embedding, which stays whole).
HfGlobalWeights load_hf_global_weights(const Checkpoint& checkpoint, const ModelConfig& config,
                                       const TpShard* shard = nullptr);
// One layer at a time, so a backend holds at most one layer in float32 while it converts.
// fp8 checkpoints: each projection's weight must be F8_E4M3 with a weight_scale of one value per
// output row ([out] or [out, 1]) or one in all, positive and finite.
// With `shard`, only the rank's slices are read: q, k, v (and their biases) its heads' rows, o
// its heads' columns, gate and up its features' rows, down their columns; norms whole.
HfLayerWeights load_hf_layer_weights(const Checkpoint& checkpoint, const ModelConfig& config,
                                     int64_t layer,
                                     Fp8Projections fp8 = Fp8Projections::kDequantized,
                                     const TpShard* shard = nullptr);

}  // namespace l2kv
