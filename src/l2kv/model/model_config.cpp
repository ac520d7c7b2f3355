#include "l2kv/model/model_config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

// Sizes beyond any real model: a config over them is corrupt or hostile, and would overflow
// the products the loader and the KV planner compute (parameter_count, layer weights).
constexpr int64_t kMaxDimension = int64_t{1} << 20;  // vocab, hidden, intermediate, heads x dim
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxPositions = std::numeric_limits<int32_t>::max();

// An integer field: a JSON integer, or a float with an integral value within [lo, hi].
// A float like 1e50 must not reach get<int64_t>(), whose conversion is undefined.
// quantization_config: absent (16-bit weights) or fp8 E4M3 weights with per-channel or
// per-tensor scales as compressed-tensors ("float-quantized") or fbgemm_fp8 write them, the LM
// head left in 16 bits. Anything else is an error naming what is not supported.
bool read_fp8_quantization(const nlohmann::json& j, const std::string& origin) {
  if (!j.contains("quantization_config") || j["quantization_config"].is_null()) return false;
  const nlohmann::json& q = j["quantization_config"];
  const std::string where = origin + ": quantization_config";
  if (!q.is_object()) throw Error(where + " is not an object");
  const std::string method = q.value("quant_method", std::string());
  // Modules left in 16 bits: the LM head, and a mixture of experts' routers (as published:
  // "re:.*mlp.gate$"), which l2kv reads in whatever dtype they are stored.
  auto only_lm_head = [&](const char* key) {
    if (!q.contains(key) || q[key].is_null()) return;
    for (const auto& m : q[key]) {
      const std::string name = m.is_string() ? m.get<std::string>() : std::string();
      const bool router = name.ends_with("mlp.gate") || name.ends_with("mlp.gate$") ||
                          name.ends_with("block_sparse_moe.gate") ||
                          name.ends_with("block_sparse_moe.gate$");
      if (name != "lm_head" && !router)
        throw Error(where + "." + key + " lists " + m.dump() +
                    ": l2kv quantizes every decoder projection and nothing else (only lm_head "
                    "and a mixture of experts' routers may be left out)");
    }
  };
  if (method == "fbgemm_fp8") {
    only_lm_head("modules_to_not_convert");
    return true;
  }
  if (method != "compressed-tensors")
    throw Error(where + ".quant_method '" + method +
                "' is not supported (l2kv reads fp8 checkpoints in the compressed-tensors and "
                "fbgemm_fp8 formats)");
  const std::string format = q.value("format", std::string());
  if (format != "float-quantized")
    throw Error(where + ".format '" + format +
                "' is not supported (compressed-tensors fp8 checkpoints are float-quantized)");
  only_lm_head("ignore");
  if (!q.contains("config_groups") || !q["config_groups"].is_object() ||
      q["config_groups"].size() != 1)
    throw Error(where + ": expected one entry in config_groups");
  const nlohmann::json& group = q["config_groups"].begin().value();
  const nlohmann::json& w = group.value("weights", nlohmann::json());
  if (!w.is_object() || w.value("num_bits", 0) != 8 || w.value("type", std::string()) != "float")
    throw Error(where + ": weights must be 8-bit float (E4M3); got " + w.dump());
  const std::string strategy = w.value("strategy", std::string());
  if (strategy != "channel" && strategy != "tensor")
    throw Error(where + ": weight strategy '" + strategy +
                "' is not supported (channel and tensor are)");
  if (w.contains("group_size") && !w["group_size"].is_null())
    throw Error(where + ": grouped weight scales are not supported");
  return true;
}

int64_t integer_value(const nlohmann::json& v, const std::string& key, int64_t lo, int64_t hi,
                      const std::string& origin) {
  const auto out_of_range = [&] {
    return Error(origin + ": " + key + " must be an integer in [" + std::to_string(lo) + ", " +
                 std::to_string(hi) + "]");
  };
  if (v.is_number_unsigned()) {  // nlohmann reads every non-negative integer as unsigned
    const uint64_t x = v.get<uint64_t>();
    if (x > static_cast<uint64_t>(hi) || (lo > 0 && x < static_cast<uint64_t>(lo)))
      throw out_of_range();
    return static_cast<int64_t>(x);
  }
  if (v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi) throw out_of_range();
    return x;
  }
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (!(x >= static_cast<double>(lo) && x <= static_cast<double>(hi)) || x != std::floor(x))
      throw out_of_range();
    return static_cast<int64_t>(x);
  }
  throw out_of_range();
}

int64_t integer_field(const nlohmann::json& j, const std::string& key, int64_t fallback, int64_t lo,
                      int64_t hi, const std::string& origin) {
  if (!j.contains(key) || j[key].is_null()) return fallback;  // null: the default, as HF writes it
  return integer_value(j[key], key, lo, hi, origin);
}

RopeConfig read_rope(const nlohmann::json& j, const std::string& origin) {
  RopeConfig rope;
  nlohmann::json params = nlohmann::json::object();
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) {
    params = j["rope_parameters"];
  } else {
    if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
      if (!j["rope_scaling"].is_object())
        throw Error(origin + ": rope_scaling must be an object or null, got " +
                    j["rope_scaling"].dump().substr(0, 64));
      params = j["rope_scaling"];
    }
    if (j.contains("rope_theta")) params["rope_theta"] = j["rope_theta"];
  }
  // A base of 0 or below makes every inverse frequency infinite or NaN: NaN logits, not an error.
  if (const auto it = params.find("rope_theta"); it != params.end()) {
    if (!it->is_number() || !(it->get<double>() > 0) || !std::isfinite(it->get<double>()))
      throw Error(origin + ": rope_theta must be a positive number, got " +
                  it->dump().substr(0, 64));
    rope.theta = it->get<double>();
  }
  const std::string type = params.value("rope_type", params.value("type", std::string("default")));
  if (type == "default") return rope;
  if (type == "linear") {
    rope.type = RopeType::kLinear;
    rope.factor = params.value("factor", 1.0);
    if (!(rope.factor > 0)) throw Error(origin + ": linear rope scaling needs factor > 0");
    return rope;
  }
  if (type != "llama3")
    throw Error(origin + ": rope type '" + type +
                "' is not supported (default, linear and llama3 are)");
  rope.type = RopeType::kLlama3;
  rope.factor = params.value("factor", 8.0);
  rope.low_freq_factor = params.value("low_freq_factor", 1.0);
  rope.high_freq_factor = params.value("high_freq_factor", 4.0);
  rope.original_max_position_embeddings =
      integer_field(params, "original_max_position_embeddings", 8192, 1, kMaxPositions, origin);
  if (rope.factor <= 0 || rope.high_freq_factor <= rope.low_freq_factor)
    throw Error(origin +
                ": llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor");
  return rope;
}

// Appends the ids of `eos_token_id` (an integer or a list of them; absent or null: none) that
// `ids` does not hold yet.
void add_eos_ids(const nlohmann::json& j, std::vector<int32_t>& ids, const std::string& origin) {
  if (!j.is_object() || !j.contains("eos_token_id") || j["eos_token_id"].is_null()) return;
  const nlohmann::json& eos = j["eos_token_id"];
  std::vector<int32_t> found;
  constexpr int64_t kMaxId = std::numeric_limits<int32_t>::max();
  if (eos.is_number_integer()) {
    found.push_back(static_cast<int32_t>(integer_value(eos, "eos_token_id", 0, kMaxId, origin)));
  } else if (eos.is_array()) {
    for (const auto& id : eos) {
      if (!id.is_number_integer()) throw Error(origin + ": eos_token_id holds a non-integer");
      found.push_back(static_cast<int32_t>(integer_value(id, "eos_token_id", 0, kMaxId, origin)));
    }
  } else {
    throw Error(origin + ": eos_token_id must be an integer or a list of integers");
  }
  for (int32_t id : found)
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
}

// An EOS id past the vocabulary is never sampled: generation would never stop on it.
void check_eos_ids(const ModelConfig& c, const std::string& origin) {
  for (int32_t id : c.eos_token_ids)
    if (id >= c.vocab_size)
      throw Error(origin + ": eos_token_id " + std::to_string(id) +
                  " is outside the vocabulary of " + std::to_string(c.vocab_size) + " tokens");
}

// Gemma 3's attention layout: which layers slide (layer_types, or every layer but each
// sliding_window_pattern-th before transformers 4.53), the window, and the two RoPEs
// (rope_parameters per layer type in transformers 5; rope_theta + rope_scaling for the global
// layers and rope_local_base_freq for the sliding ones in the Hub's configs).
void read_gemma3_attention(const nlohmann::json& j, ModelConfig& c, const std::string& origin) {
  c.sliding_window = integer_field(j, "sliding_window", 4096, 1, kMaxPositions, origin);
  c.sliding_layer.assign(static_cast<size_t>(c.num_layers), 0);
  if (j.contains("layer_types") && j["layer_types"].is_array()) {
    if (static_cast<int64_t>(j["layer_types"].size()) != c.num_layers)
      throw Error(origin + ": layer_types lists " + std::to_string(j["layer_types"].size()) +
                  " layers, num_hidden_layers is " + std::to_string(c.num_layers));
    for (size_t l = 0; l < j["layer_types"].size(); ++l) {
      const auto& type = j["layer_types"][l];
      const std::string name = type.is_string() ? type.get<std::string>() : type.dump();
      if (name != "sliding_attention" && name != "full_attention")
        throw Error(origin + ": layer type " + name +
                    " is not supported (sliding_attention and full_attention are)");
      c.sliding_layer[l] = name == "sliding_attention";
    }
  } else {
    const int64_t pattern = integer_field(j, "sliding_window_pattern", 6, 1, kMaxLayers, origin);
    for (int64_t l = 0; l < c.num_layers; ++l) c.sliding_layer[l] = (l + 1) % pattern != 0;
  }
  if (j.contains("rope_parameters") && j["rope_parameters"].is_object() &&
      j["rope_parameters"].contains("full_attention")) {
    const auto& p = j["rope_parameters"];
    c.rope = read_rope({{"rope_parameters", p["full_attention"]}}, origin);
    c.local_rope = p.contains("sliding_attention")
                       ? read_rope({{"rope_parameters", p["sliding_attention"]}}, origin)
                       : RopeConfig{};
  } else {
    c.rope = read_rope(j, origin);
    c.local_rope.theta = j.value("rope_local_base_freq", 10000.0);
  }
  const auto cap = [&](const char* key) {
    if (!j.contains(key) || j[key].is_null()) return 0.0;
    const double v = j[key].get<double>();
    if (!(v > 0)) throw Error(origin + ": " + key + " must be positive or null");
    return v;
  };
  c.final_logit_softcapping = cap("final_logit_softcapping");
  c.attn_logit_softcapping = cap("attn_logit_softcapping");
  const double scalar = j.value("query_pre_attn_scalar", static_cast<double>(c.head_dim));
  if (!(scalar > 0)) throw Error(origin + ": query_pre_attn_scalar must be positive");
  c.attention_scale = 1.0 / std::sqrt(scalar);
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream f(path);
  if (!f) throw Error(path.string() + ": cannot open");
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// generation_config.json's sampling fields, held to the ranges a request's are.
ModelConfig::GenerationDefaults read_generation_defaults(const nlohmann::json& j,
                                                         const std::string& origin) {
  ModelConfig::GenerationDefaults d;
  if (!j.is_object()) throw Error(origin + ": expected a JSON object, got " + j.type_name());
  const auto number = [&](const char* key, double lo, double hi,
                          bool lo_open) -> std::optional<double> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const auto& v = j[key];
    const double x = v.is_number() ? v.get<double>() : std::nan("");
    if (!(lo_open ? x > lo : x >= lo) || !(x <= hi)) {
      std::ostringstream range;
      range << (lo_open ? "(" : "[") << lo << ", " << hi << "]";
      throw Error(origin + ": " + key + " must be a number in " + range.str() + ", got " +
                  v.dump().substr(0, 64));
    }
    return x;
  };
  d.temperature = number("temperature", 0, 1e6, false);
  d.top_p = number("top_p", 0, 1, true);
  d.min_p = number("min_p", 0, 1, false);
  d.repetition_penalty = number("repetition_penalty", 0, 1e6, true);
  if (j.contains("top_k") && !j["top_k"].is_null()) {
    const auto& v = j["top_k"];
    if (!v.is_number_integer() || v.get<int64_t>() < -1 ||
        v.get<int64_t>() > (int64_t{1} << 31) - 1)
      throw Error(origin + ": top_k must be an integer in [-1, 2^31), got " +
                  v.dump().substr(0, 64));
    d.top_k = v.get<int64_t>();
  }
  if (j.contains("max_new_tokens") && !j["max_new_tokens"].is_null()) {
    const auto& v = j["max_new_tokens"];
    if (!v.is_number_integer() || v.get<int64_t>() < 1)
      throw Error(origin + ": max_new_tokens must be a positive integer, got " +
                  v.dump().substr(0, 64));
    d.max_new_tokens = std::min<int64_t>(v.get<int64_t>(), std::numeric_limits<int32_t>::max());
  }
  return d;
}

}  // namespace

ModelConfig ModelConfig::from_folder(const std::filesystem::path& folder) {
  const auto path = folder / "config.json";
  ModelConfig c = from_json_text(read_text(path), path.string());
  const auto generation = folder / "generation_config.json";
  if (std::filesystem::exists(generation)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text(generation));
    } catch (const nlohmann::json::exception& e) {
      throw Error(generation.string() + ": not JSON (" + e.what() + ")");
    }
    add_eos_ids(j, c.eos_token_ids, generation.string());
    check_eos_ids(c, generation.string());
    c.generation_defaults = read_generation_defaults(j, generation.string());
  }
  return c;
}

ModelConfig ModelConfig::from_json_text(const std::string& text, const std::string& origin) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(origin + ": not JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw Error(origin + ": expected a JSON object, got " + j.type_name());
  // Hugging Face writes null for a setting left at its default.
  const auto present = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  const auto required = [&](const char* key) -> const nlohmann::json& {
    if (!present(key)) throw Error(origin + ": " + key + " is missing");
    return j[key];
  };
  const auto number = [&](const char* key, double fallback) {
    if (!present(key)) return fallback;
    if (!j[key].is_number()) throw Error(origin + ": " + key + " must be a number");
    return j[key].get<double>();
  };
  const auto boolean = [&](const char* key, bool fallback) {
    if (!present(key)) return fallback;
    if (!j[key].is_boolean()) throw Error(origin + ": " + key + " must be true or false");
    return j[key].get<bool>();
  };
  const auto string_field = [&](const char* key, const std::string& fallback) {
    if (!present(key)) return fallback;
    if (!j[key].is_string()) throw Error(origin + ": " + key + " must be a string");
    return j[key].get<std::string>();
  };
  ModelConfig c;
  try {
    const nlohmann::json& arch_list = required("architectures");
    if (!arch_list.is_array() ||
        !std::all_of(arch_list.begin(), arch_list.end(),
                     [](const nlohmann::json& a) { return a.is_string(); }))
      throw Error(origin + ": architectures must be a list of names");
    const auto archs = arch_list.get<std::vector<std::string>>();
    if (archs.size() != 1) throw Error(origin + ": expected one architecture");
    c.architecture = archs[0];
    const bool mixtral = c.architecture == "MixtralForCausalLM";
    const bool llama =
        c.architecture == "LlamaForCausalLM" || c.architecture == "MistralForCausalLM" || mixtral;
    const bool qwen2 = c.architecture == "Qwen2ForCausalLM";
    const bool qwen3_moe = c.architecture == "Qwen3MoeForCausalLM";
    const bool qwen3 = c.architecture == "Qwen3ForCausalLM" || qwen3_moe;
    const bool gemma3 = c.architecture == "Gemma3ForCausalLM";
    if (!llama && !qwen2 && !qwen3 && !gemma3)
      throw Error(origin + ": architecture " + c.architecture +
                  " is not supported (LlamaForCausalLM, MistralForCausalLM, MixtralForCausalLM, "
                  "Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM, Gemma3ForCausalLM "
                  "are)");
    const auto size = [&](const char* key, int64_t fallback, int64_t hi) {
      return integer_field(j, key, fallback, std::numeric_limits<int64_t>::min(), hi, origin);
    };
    c.vocab_size = integer_value(required("vocab_size"), "vocab_size", 1, kMaxDimension, origin);
    c.hidden_size = integer_value(required("hidden_size"), "hidden_size", 1, kMaxDimension, origin);
    c.intermediate_size =
        integer_value(required("intermediate_size"), "intermediate_size", 1, kMaxDimension, origin);
    c.num_layers =
        integer_value(required("num_hidden_layers"), "num_hidden_layers", 1, kMaxLayers, origin);
    c.num_q_heads = integer_value(required("num_attention_heads"), "num_attention_heads", 1,
                                  kMaxDimension, origin);
    c.num_kv_heads = size("num_key_value_heads", c.num_q_heads, kMaxDimension);
    const bool head_dim_given = j.contains("head_dim") && j["head_dim"].is_number();
    if (!head_dim_given && c.hidden_size % c.num_q_heads != 0)
      throw Error(origin + ": num_attention_heads " + std::to_string(c.num_q_heads) +
                  " does not divide hidden_size " + std::to_string(c.hidden_size) +
                  ", and there is no head_dim");
    c.head_dim =
        head_dim_given ? size("head_dim", 0, kMaxDimension) : c.hidden_size / c.num_q_heads;
    c.rms_norm_eps = number("rms_norm_eps", 1e-6);
    if (!(c.rms_norm_eps > 0 && c.rms_norm_eps < 1))
      throw Error(origin + ": rms_norm_eps must be in (0, 1)");
    c.tie_word_embeddings = boolean("tie_word_embeddings", gemma3);
    c.max_position_embeddings = size("max_position_embeddings", 0, kMaxPositions);
    // Qwen2 always has a QKV bias; Qwen3 has one only where attention_bias says so.
    c.qkv_bias = qwen2 || boolean("attention_bias", false);
    c.qk_norm = qwen3 || gemma3;
    if (boolean("mlp_bias", false)) throw Error(origin + ": mlp_bias is not supported");
    // Gemma writes hidden_activation (and sometimes a stale hidden_act beside it).
    const std::string act = gemma3 ? string_field("hidden_activation", "gelu_pytorch_tanh")
                                   : string_field("hidden_act", "silu");
    if (act != (gemma3 ? "gelu_pytorch_tanh" : "silu"))
      throw Error(origin + ": hidden activation " + act + " is not supported (" +
                  (gemma3 ? "gelu_pytorch_tanh" : "silu") + " is)");
    c.mlp_activation = gemma3 ? MlpActivation::kGeluTanh : MlpActivation::kSilu;
    c.gemma = gemma3;
    // Qwen2/3 configs carry a sliding_window size that only use_sliding_window turns on;
    // transformers 5 also lists each layer's attention in layer_types.
    const bool qwen = qwen2 || qwen3;
    const bool sliding = qwen ? boolean("use_sliding_window", false)
                              : (j.contains("sliding_window") && !j["sliding_window"].is_null());
    if (gemma3) {
      read_gemma3_attention(j, c, origin);
    } else if (sliding) {
      throw Error(origin + ": sliding-window attention is not supported" +
                  (qwen ? " (use_sliding_window is true)" : " (sliding_window is set)"));
    } else {
      if (j.contains("layer_types") && j["layer_types"].is_array())
        for (const auto& type : j["layer_types"])
          if (!type.is_string() || type.get<std::string>() != "full_attention")
            throw Error(origin + ": layer type " + type.dump() +
                        " is not supported (full_attention is)");
      c.rope = read_rope(j, origin);
    }
    c.fp8_weights = read_fp8_quantization(j, origin);
    if (mixtral) {
      c.num_experts = size("num_local_experts", 0, 4096);
      c.experts_per_token = size("num_experts_per_tok", 0, 4096);
      c.expert_intermediate_size = c.intermediate_size;
      c.norm_topk_prob = true;  // Mixtral always renormalizes its top-k weights
    } else if (qwen3_moe) {
      c.num_experts = size("num_experts", 0, 4096);
      c.experts_per_token = size("num_experts_per_tok", 0, 4096);
      c.expert_intermediate_size = size("moe_intermediate_size", 0, kMaxDimension);
      c.norm_topk_prob = boolean("norm_topk_prob", false);
      if (size("decoder_sparse_step", 1, kMaxLayers) != 1)
        throw Error(origin + ": decoder_sparse_step other than 1 is not supported");
      if (j.contains("mlp_only_layers") && j["mlp_only_layers"].is_array() &&
          !j["mlp_only_layers"].empty())
        throw Error(origin +
                    ": mlp_only_layers (dense layers among the MoE ones) is not "
                    "supported");
      if (size("shared_expert_intermediate_size", 0, kMaxDimension) > 0)
        throw Error(origin + ": shared experts are not supported");
    }
    if ((mixtral || qwen3_moe) &&
        (c.num_experts < 1 || c.experts_per_token < 1 || c.experts_per_token > c.num_experts ||
         c.expert_intermediate_size < 1))
      throw Error(origin +
                  ": a mixture of experts needs 1 <= num_experts_per_tok <= the number "
                  "of experts and a positive expert intermediate size");
    const std::string dtype = string_field("torch_dtype", string_field("dtype", "bfloat16"));
    if (dtype != "bfloat16" && dtype != "float16" && dtype != "float32")
      throw Error(origin + ": torch_dtype " + dtype +
                  " is not supported (bfloat16, float16 and float32 are; float32 runs in "
                  "bfloat16)");
    c.dtype = dtype == "float16" ? DType::kFloat16 : DType::kBFloat16;
    add_eos_ids(j, c.eos_token_ids, origin);
    check_eos_ids(c, origin);
  } catch (const nlohmann::json::exception& e) {
    throw Error(origin + ": " + e.what());
  }
  // The other sizes were read with a lower bound of 1; these two without one.
  for (const auto& [key, value] :
       {std::pair<const char*, int64_t>{"num_key_value_heads", c.num_kv_heads},
        {"head_dim", c.head_dim}})
    if (value <= 0)
      throw Error(origin + ": " + key + " must be positive, got " + std::to_string(value));
  if (c.head_dim % 2 != 0)
    throw Error(origin + ": head_dim must be even (RoPE rotates pairs), got " +
                std::to_string(c.head_dim));
  if (c.num_q_heads * c.head_dim > kMaxDimension)
    throw Error(origin + ": " + std::to_string(c.num_q_heads) + " heads of " +
                std::to_string(c.head_dim) + " are over the limit of " +
                std::to_string(kMaxDimension) + " query dimensions");
  if (c.num_q_heads % c.num_kv_heads != 0)
    throw Error(origin + ": " + std::to_string(c.num_q_heads) +
                " attention heads do not divide into " + std::to_string(c.num_kv_heads) +
                " key/value heads");
  return c;
}

ModelConfig ModelConfig::synthetic(const std::string& full_name) {
  ModelConfig c;
  const std::string fp8_suffix = "-fp8";
  c.fp8_weights =
      full_name.size() > fp8_suffix.size() &&
      full_name.compare(full_name.size() - fp8_suffix.size(), fp8_suffix.size(), fp8_suffix) == 0;
  const std::string name =
      c.fp8_weights ? full_name.substr(0, full_name.size() - fp8_suffix.size()) : full_name;
  c.architecture = "LlamaForCausalLM";
  c.head_dim = 128;
  c.max_position_embeddings = 32768;
  if (name == "llama2-7b") {
    c.vocab_size = 32000, c.hidden_size = 4096, c.intermediate_size = 11008, c.num_layers = 32;
    c.num_q_heads = 32, c.num_kv_heads = 32, c.rms_norm_eps = 1e-5, c.rope.theta = 10000;
  } else if (name == "llama3-8b") {
    c.vocab_size = 128256, c.hidden_size = 4096, c.intermediate_size = 14336, c.num_layers = 32;
    c.num_q_heads = 32, c.num_kv_heads = 8, c.rms_norm_eps = 1e-5, c.rope.theta = 500000;
  } else if (name == "llama3-70b") {  // two GPUs or more: --tensor-parallel-size
    c.vocab_size = 128256, c.hidden_size = 8192, c.intermediate_size = 28672, c.num_layers = 80;
    c.num_q_heads = 64, c.num_kv_heads = 8, c.rms_norm_eps = 1e-5, c.rope.theta = 500000;
  } else if (name == "qwen2.5-7b") {
    c.architecture = "Qwen2ForCausalLM", c.qkv_bias = true;
    c.vocab_size = 152064, c.hidden_size = 3584, c.intermediate_size = 18944, c.num_layers = 28;
    c.num_q_heads = 28, c.num_kv_heads = 4, c.rms_norm_eps = 1e-6, c.rope.theta = 1000000;
  } else if (name == "qwen2.5-14b") {
    c.architecture = "Qwen2ForCausalLM", c.qkv_bias = true;
    c.vocab_size = 152064, c.hidden_size = 5120, c.intermediate_size = 13824, c.num_layers = 48;
    c.num_q_heads = 40, c.num_kv_heads = 8, c.rms_norm_eps = 1e-5, c.rope.theta = 1000000;
  } else if (name == "qwen3-8b") {
    c.architecture = "Qwen3ForCausalLM", c.qk_norm = true;
    c.vocab_size = 151936, c.hidden_size = 4096, c.intermediate_size = 12288, c.num_layers = 36;
    c.num_q_heads = 32, c.num_kv_heads = 8, c.rms_norm_eps = 1e-6, c.rope.theta = 1000000;
  } else if (name == "qwen3-30b-a3b") {
    c.architecture = "Qwen3MoeForCausalLM", c.qk_norm = true;
    c.vocab_size = 151936, c.hidden_size = 2048, c.num_layers = 48;
    c.num_q_heads = 32, c.num_kv_heads = 4, c.rms_norm_eps = 1e-6, c.rope.theta = 1000000;
    c.num_experts = 128, c.experts_per_token = 8, c.expert_intermediate_size = 768;
    c.norm_topk_prob = true;
  } else if (name == "mixtral-8x7b") {
    c.architecture = "MixtralForCausalLM";
    c.vocab_size = 32000, c.hidden_size = 4096, c.num_layers = 32;
    c.num_q_heads = 32, c.num_kv_heads = 8, c.rms_norm_eps = 1e-5, c.rope.theta = 1000000;
    c.num_experts = 8, c.experts_per_token = 2, c.expert_intermediate_size = 14336;
    c.norm_topk_prob = true;
  } else if (name == "gemma3-12b" || name == "gemma3-27b") {
    // Five sliding-window layers to one global, as the Hub's configs.
    const bool big = name == "gemma3-27b";
    c.architecture = "Gemma3ForCausalLM", c.gemma = true, c.qk_norm = true;
    c.tie_word_embeddings = true, c.mlp_activation = MlpActivation::kGeluTanh;
    c.vocab_size = 262208, c.rms_norm_eps = 1e-6;
    if (big) {
      c.hidden_size = 5376, c.intermediate_size = 21504, c.num_layers = 62;
      c.num_q_heads = 32, c.num_kv_heads = 16, c.head_dim = 128;
      c.attention_scale = 1.0 / std::sqrt(168.0);  // query_pre_attn_scalar
    } else {
      c.hidden_size = 3840, c.intermediate_size = 15360, c.num_layers = 48;
      c.num_q_heads = 16, c.num_kv_heads = 8, c.head_dim = 256;
      c.attention_scale = 1.0 / std::sqrt(256.0);
    }
    c.rope.theta = 1000000, c.rope.type = RopeType::kLinear, c.rope.factor = 8;
    c.local_rope.theta = 10000;
    c.sliding_window = 1024;
    c.sliding_layer.assign(static_cast<size_t>(c.num_layers), 0);
    for (int64_t l = 0; l < c.num_layers; ++l) c.sliding_layer[l] = (l + 1) % 6 != 0;
  } else {
    throw Error("unknown synthetic model '" + full_name +
                "' (known: llama2-7b, llama3-8b, llama3-70b, qwen2.5-7b, qwen2.5-14b, qwen3-8b, "
                "qwen3-30b-a3b, mixtral-8x7b, gemma3-12b, gemma3-27b, each dense one also as "
                "NAME-fp8 with fp8 projections)");
  }
  return c;
}

int64_t ModelConfig::projection_parameter_count() const {
  const int64_t q_dim = num_q_heads * head_dim, kv_dim = num_kv_heads * head_dim;
  // A mixture of experts' experts are dequantized at load (hf_weights.h): not counted here.
  const int64_t mlp = num_experts > 0 ? 0 : 3 * hidden_size * intermediate_size;
  return num_layers * (hidden_size * (q_dim + 2 * kv_dim) + q_dim * hidden_size + mlp);
}

int64_t ModelConfig::weight_bytes() const {
  return 2 * parameter_count() - (fp8_weights ? projection_parameter_count() : 0);
}

int64_t ModelConfig::parameter_count() const {
  const int64_t q_dim = num_q_heads * head_dim, kv_dim = num_kv_heads * head_dim;
  const int64_t attention = hidden_size * (q_dim + 2 * kv_dim) + q_dim * hidden_size +
                            (qkv_bias ? q_dim + 2 * kv_dim : 0);
  const int64_t mlp = num_experts > 0
                          ? num_experts * (3 * hidden_size * expert_intermediate_size + hidden_size)
                          : 3 * hidden_size * intermediate_size;
  const int64_t per_layer = attention + mlp + 2 * hidden_size + (qk_norm ? 2 * head_dim : 0);
  return vocab_size * hidden_size * (tie_word_embeddings ? 1 : 2) + num_layers * per_layer +
         hidden_size;
}

std::vector<float> rope_inverse_frequencies(const RopeConfig& rope, int64_t head_dim) {
  std::vector<float> inv(static_cast<size_t>(head_dim / 2));
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv[i] = 1.0f / std::pow(static_cast<float>(rope.theta), exponent);
  }
  if (rope.type == RopeType::kLinear)
    for (auto& f : inv) f = static_cast<float>(f / rope.factor);
  if (rope.type != RopeType::kLlama3) return inv;
  const double old_len = static_cast<double>(rope.original_max_position_embeddings);
  const double low_wavelen = old_len / rope.low_freq_factor;
  const double high_wavelen = old_len / rope.high_freq_factor;
  for (auto& f : inv) {
    const double wavelen = 2 * M_PI / f;
    if (wavelen > low_wavelen) {
      f = static_cast<float>(f / rope.factor);  // low frequencies: stretched
    } else if (wavelen >= high_wavelen) {       // medium: interpolated
      const double smooth = (old_len / wavelen - rope.low_freq_factor) /
                            (rope.high_freq_factor - rope.low_freq_factor);
      f = static_cast<float>((1 - smooth) * f / rope.factor + smooth * f);
    }
  }
  return inv;
}

}  // namespace l2kv
