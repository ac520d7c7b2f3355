#include "l2kv/model/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"
#include "l2kv/model/model_config.h"

namespace l2kv {
namespace {

namespace fs = std::filesystem;

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("l2kv_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A .safetensors file with `header` (JSON text) and `data` bytes; header_len_override replaces
// the stored header length.
void write_file(const fs::path& path, const std::string& header, const std::string& data,
                int64_t header_len_override = -1) {
  std::ofstream f(path, std::ios::binary);
  const uint64_t len =
      header_len_override >= 0 ? static_cast<uint64_t>(header_len_override) : header.size();
  for (int i = 0; i < 8; ++i) f.put(static_cast<char>((len >> (8 * i)) & 0xff));
  f << header << data;
}

template <typename Fn>
void expect_error(Fn fn, const std::string& fragment) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Safetensors, ReadsEveryFloatDtype) {
  const fs::path dir = fresh_dir("st_ok");
  std::string data;
  const float f32[2] = {1.5f, -2.25f};
  data.append(reinterpret_cast<const char*>(f32), 8);
  for (uint16_t bits : {float_to_fp16_bits(0.5f), float_to_fp16_bits(-3.f)})
    data.append(reinterpret_cast<const char*>(&bits), 2);
  for (uint16_t bits : {float_to_bf16_bits(7.f), float_to_bf16_bits(-0.125f)})
    data.append(reinterpret_cast<const char*>(&bits), 2);
  write_file(dir / "model.safetensors",
             R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F16", "shape": [1, 2], "data_offsets": [8, 12]},
                 "c": {"dtype": "BF16", "shape": [2], "data_offsets": [12, 16]},
                 "__metadata__": {"format": "pt"}})",
             data);
  const Checkpoint ckpt(dir);
  EXPECT_EQ(ckpt.get("a", {2}).to_float(), (std::vector<float>{1.5f, -2.25f}));
  EXPECT_EQ(ckpt.get("b", {1, 2}).to_float(), (std::vector<float>{0.5f, -3.f}));
  EXPECT_EQ(ckpt.get("c", {2}).to_float(), (std::vector<float>{7.f, -0.125f}));
  expect_error([&] { ckpt.get("missing", {1}); }, "missing tensor missing");
  expect_error([&] { ckpt.get("a", {3}); }, "has shape [2], expected [3]");
}

TEST(Safetensors, RejectsBadFilesWithTheirName) {
  const fs::path dir = fresh_dir("st_bad");
  const fs::path file = dir / "model.safetensors";
  expect_error([&] { Checkpoint c(dir); }, "no .safetensors files");
  expect_error([&] { Checkpoint c(dir / "nope"); }, "not a model folder");
  std::ofstream(file, std::ios::binary) << "abc";
  expect_error([&] { SafetensorsFile f(file); }, "truncated");
  write_file(file, "{}", "", 1000);
  expect_error([&] { SafetensorsFile f(file); }, "points past the end");
  write_file(file, "{not json", "");
  expect_error([&] { SafetensorsFile f(file); }, "header is not JSON");
  write_file(file, R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
             std::string(8, '\0'));
  expect_error([&] { SafetensorsFile f(file); }, "outside the file");
  write_file(file, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})",
             std::string(8, '\0'));
  expect_error([&] { SafetensorsFile f(file); }, "with begin <= end");
  write_file(file, R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})",
             std::string(8, '\0'));
  expect_error([&] { SafetensorsFile f(file); }, "should hold 12 bytes");
  write_file(file, R"({"a": {"dtype": "F32", "shape": "x", "data_offsets": [0, 8]}})",
             std::string(8, '\0'));
  expect_error([&] { SafetensorsFile f(file); }, "malformed header entry");
  write_file(file, R"({"a": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}})",
             std::string(8, '\0'));
  expect_error([&] { SafetensorsFile(file).tensors().at("a").to_float(); }, "dtype I64");
  expect_error([&] { SafetensorsFile f(dir / "absent.safetensors"); }, "cannot open");
  // A tensor named twice (JSON would keep the last entry) and two tensors sharing bytes (one
  // would load the other's weights) are refused.
  write_file(file,
             R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                 "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
             std::string(8, '\0'));
  expect_error([&] { SafetensorsFile f(file); }, "names tensor a twice");
  write_file(file,
             R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
             std::string(8, '\0'));
  expect_error([&] { SafetensorsFile f(file); }, "tensors a and b have overlapping data offsets");
  write_file(file,
             R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
                 "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
             std::string(8, '\0'));
  EXPECT_EQ(SafetensorsFile(file).tensors().size(), 3u);  // adjacent and empty tensors are fine
  const fs::path folder_named_like_a_file = fresh_dir("st_dir") / "model.safetensors";
  fs::create_directories(folder_named_like_a_file);
  expect_error([&] { SafetensorsFile f(folder_named_like_a_file); }, "not a regular file");
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map": {"a": "model-00001-of-00002.safetensors"}})";
  expect_error([&] { Checkpoint c(dir); }, "missing shard model-00001-of-00002.safetensors");
}

TEST(ModelConfig, ReadsBothRopeFormsAndRejectsTheUnsupported) {
  const std::string base =
      R"("vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
      "num_attention_heads": 2, "num_key_value_heads": 1)";
  const auto parse = [&](const std::string& arch, const std::string& more) {
    return ModelConfig::from_json_text(
        R"({"architectures": [")" + arch + R"("], )" + base + more + "}", "config.json");
  };
  const auto classic =
      parse("LlamaForCausalLM", R"(, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3",
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  const auto v5 = parse("LlamaForCausalLM",
                        R"(, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
      "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})");
  EXPECT_EQ(classic.rope.type, RopeType::kLlama3);
  EXPECT_EQ(rope_inverse_frequencies(classic.rope, 4), rope_inverse_frequencies(v5.rope, 4));
  EXPECT_EQ(classic.head_dim, 4);
  EXPECT_TRUE(parse("Qwen2ForCausalLM", "").qkv_bias);
  EXPECT_EQ(parse("LlamaForCausalLM", R"(, "torch_dtype": "float16")").dtype, DType::kFloat16);
  EXPECT_EQ(parse("LlamaForCausalLM", R"(, "dtype": "float32")").dtype, DType::kBFloat16);
  expect_error([&] { parse("GPT2LMHeadModel", ""); },
               "architecture GPT2LMHeadModel is not supported");
  expect_error(
      [&] {
        parse("LlamaForCausalLM", R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4.0})");
      },
      "rope type 'yarn'");
  expect_error([&] { parse("MistralForCausalLM", R"(, "sliding_window": 4096)"); },
               "sliding-window");
  expect_error([&] { ModelConfig::from_json_text("{", "config.json"); }, "not JSON");
  // Each bad size is named (a repeated key overrides the base's: nlohmann keeps the last).
  expect_error([&] { parse("LlamaForCausalLM", R"(, "rope_scaling": "linear")"); },
               "rope_scaling must be an object or null");
  // A base of 0 or below gives NaN logits; a string is named, not a bare JSON type error.
  for (const char* theta : {"0", "-10000.0", "\"500000\""})
    expect_error([&] { parse("LlamaForCausalLM", std::string(R"(, "rope_theta": )") + theta); },
                 "rope_theta must be a positive number");
  expect_error([&] { parse("LlamaForCausalLM", R"(, "hidden_size": 0)"); },
               "hidden_size must be an integer in [1,");
  expect_error([&] { parse("LlamaForCausalLM", R"(, "num_hidden_layers": 0)"); },
               "num_hidden_layers must be an integer in [1,");
  expect_error([&] { parse("LlamaForCausalLM", R"(, "num_key_value_heads": 0)"); },
               "num_key_value_heads must be positive, got 0");
  expect_error([&] { parse("LlamaForCausalLM", R"(, "head_dim": 3)"); }, "head_dim must be even");
  expect_error(
      [&] { parse("LlamaForCausalLM", R"(, "num_attention_heads": 3, "num_key_value_heads": 3)"); },
      "num_attention_heads 3 does not divide hidden_size 8, and there is no head_dim");
  expect_error(
      [&] {
        ModelConfig::from_json_text(R"({"architectures": ["LlamaForCausalLM"]})", "config.json");
      },
      "config.json");
  expect_error(
      [&] {
        ModelConfig::from_json_text(
            R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 12,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 2})",
            "config.json");
      },
      "do not divide");
  // Malformed configs name the key and what it must hold, not the JSON library's words.
  expect_error([&] { ModelConfig::from_json_text("[1, 2]", "config.json"); },
               "expected a JSON object, got array");
  expect_error(
      [&] {
        ModelConfig::from_json_text(R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10})",
                                    "config.json");
      },
      "hidden_size is missing");
  expect_error([&] { parse("LlamaForCausalLM", R"(, "torch_dtype": "int4")"); },
               "torch_dtype int4 is not supported");
  expect_error([&] { parse("LlamaForCausalLM", R"(, "rms_norm_eps": "x")"); },
               "rms_norm_eps must be a number");
  expect_error([&] { parse("LlamaForCausalLM", R"(, "tie_word_embeddings": 1)"); },
               "tie_word_embeddings must be true or false");
  expect_error(
      [&] {
        ModelConfig::from_json_text(R"({"architectures": "LlamaForCausalLM"})", "config.json");
      },
      "architectures must be a list");
  const std::string string_size =
      R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": "8",
      "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2})";
  expect_error([&] { ModelConfig::from_json_text(string_size, "config.json"); },
               "hidden_size must be an integer in [1, ");
  // A null is the setting's default, as Hugging Face writes it.
  EXPECT_EQ(parse("LlamaForCausalLM", R"(, "rms_norm_eps": null)").rms_norm_eps, 1e-6);
  const ModelConfig nulls =
      parse("Qwen3ForCausalLM", R"(, "attention_bias": null, "torch_dtype": null,
      "max_position_embeddings": null, "use_sliding_window": null)");
  EXPECT_FALSE(nulls.qkv_bias);
  EXPECT_EQ(nulls.dtype, DType::kBFloat16);
  expect_error([&] { parse("LlamaForCausalLM", R"(, "hidden_act": 5)"); },
               "hidden_act must be a string");
}

// Qwen3 as its Hub configs write it: head_dim given (not hidden / heads), no QKV bias unless
// attention_bias says so, a sliding_window size that only use_sliding_window turns on.
TEST(ModelConfig, Qwen3HasPerHeadQkNormAndItsOwnHeadDim) {
  const auto parse = [](const std::string& more) {
    return ModelConfig::from_json_text(
        R"({"architectures": ["Qwen3ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 16, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": null, "max_window_layers": 2)" +
            more + "}",
        "config.json");
  };
  const ModelConfig c = parse(R"(, "attention_bias": false, "use_sliding_window": false,
      "tie_word_embeddings": true, "layer_types": ["full_attention", "full_attention"])");
  EXPECT_EQ(c.architecture, "Qwen3ForCausalLM");
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope.theta, 1e6);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_FALSE(parse("").qkv_bias);  // attention_bias absent: none
  EXPECT_TRUE(parse(R"(, "attention_bias": true)").qkv_bias);
  EXPECT_FALSE(parse(R"(, "tie_word_embeddings": false)").tie_word_embeddings);
  // The q/k norm weights count: two of head_dim per layer.
  ModelConfig without = c;
  without.qk_norm = false;
  EXPECT_EQ(c.parameter_count() - without.parameter_count(), 2 * 2 * 16);
  expect_error([&] { parse(R"(, "use_sliding_window": true, "sliding_window": 4096)"); },
               "sliding-window attention is not supported (use_sliding_window is true)");
  expect_error([&] { parse(R"(, "layer_types": ["full_attention", "sliding_attention"])"); },
               "layer type \"sliding_attention\" is not supported");
  // Other architectures have no q/k norm.
  EXPECT_FALSE(ModelConfig::from_json_text(
                   R"({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
                   "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2})",
                   "config.json")
                   .qk_norm);
}

TEST(ModelConfig, ReadsFp8QuantizationAndNamesWhatIsNotSupported) {
  const auto parse = [](const std::string& quantization) {
    return ModelConfig::from_json_text(
        R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "quantization_config": )" +
            quantization + "}",
        "config.json");
  };
  const std::string weights = R"("weights": {"num_bits": 8, "type": "float", "strategy": )";
  const auto compressed = [&](const std::string& strategy, const std::string& more = "") {
    return R"({"quant_method": "compressed-tensors", "format": "float-quantized",
        "ignore": ["lm_head"], "config_groups": {"group_0": {"targets": ["Linear"], )" +
           weights + "\"" + strategy + "\"" + more + "}}}}";
  };
  EXPECT_TRUE(parse(compressed("channel")).fp8_weights);
  EXPECT_TRUE(parse(compressed("tensor")).fp8_weights);
  EXPECT_TRUE(parse(R"({"quant_method": "fbgemm_fp8", "modules_to_not_convert": ["lm_head"]})")
                  .fp8_weights);
  EXPECT_FALSE(parse("null").fp8_weights);
  expect_error([&] { parse(R"({"quant_method": "awq", "bits": 4})"); },
               "quant_method 'awq' is not supported");
  expect_error([&] { parse(compressed("group", R"(, "group_size": 128)")); },
               "weight strategy 'group'");
  expect_error(
      [&] {
        parse(
            R"({"quant_method": "fbgemm_fp8", "modules_to_not_convert": ["model.layers.0.mlp"]})");
      },
      "lists \"model.layers.0.mlp\"");
  // A mixture of experts' routers may stay in 16 bits, named as published.
  const auto ignoring = [&](const std::string& ignored) {
    std::string q = compressed("channel");
    q.replace(q.find(R"(["lm_head"])"), 11, ignored);
    return parse(q);
  };
  EXPECT_TRUE(ignoring(R"(["lm_head", "re:.*mlp.gate$"])").fp8_weights);
  EXPECT_TRUE(ignoring(R"(["lm_head", "re:.*block_sparse_moe.gate$"])").fp8_weights);
  EXPECT_TRUE(ignoring(R"(["model.layers.0.mlp.gate"])").fp8_weights);
  expect_error([&] { ignoring(R"(["lm_head", "re:.*mlp.gate_proj$"])"); },
               "lists \"re:.*mlp.gate_proj$\"");
  expect_error(
      [&] {
        parse(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
            "config_groups": {}})");
      },
      "format 'pack-quantized'");
}

TEST(ModelConfig, ReadsMixturesOfExpertsAndRefusesWhatTheyDoNotSupport) {
  const auto parse = [](const std::string& arch, const std::string& more) {
    return ModelConfig::from_json_text(R"({"architectures": [")" + arch +
                                           R"("], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1)" + more + "}",
                                       "config.json");
  };
  const ModelConfig mixtral =
      parse("MixtralForCausalLM", R"(, "num_local_experts": 8, "num_experts_per_tok": 2)");
  EXPECT_EQ(mixtral.num_experts, 8);
  EXPECT_EQ(mixtral.experts_per_token, 2);
  EXPECT_EQ(mixtral.expert_intermediate_size, 16);
  EXPECT_TRUE(mixtral.norm_topk_prob);
  EXPECT_EQ(mixtral.parameter_count() - parse("MistralForCausalLM", "").parameter_count(),
            8 * (3 * 8 * 16 + 8) - 3 * 8 * 16);
  const std::string qwen = R"(, "num_experts": 128, "num_experts_per_tok": 8,
      "moe_intermediate_size": 12, "head_dim": 4)";
  const ModelConfig moe = parse("Qwen3MoeForCausalLM", qwen + R"(, "norm_topk_prob": true)");
  EXPECT_EQ(moe.num_experts, 128);
  EXPECT_EQ(moe.expert_intermediate_size, 12);
  EXPECT_TRUE(moe.qk_norm);
  EXPECT_FALSE(parse("Qwen3MoeForCausalLM", qwen).norm_topk_prob);
  EXPECT_EQ(parse("Qwen3ForCausalLM", "").num_experts, 0);
  expect_error([&] { parse("Qwen3MoeForCausalLM", qwen + R"(, "decoder_sparse_step": 2)"); },
               "decoder_sparse_step");
  expect_error([&] { parse("Qwen3MoeForCausalLM", qwen + R"(, "mlp_only_layers": [0])"); },
               "mlp_only_layers");
  expect_error(
      [&] { parse("MixtralForCausalLM", R"(, "num_local_experts": 2, "num_experts_per_tok": 3)"); },
      "num_experts_per_tok");
}

TEST(Safetensors, ReadsF8E4M3) {
  const fs::path dir = fresh_dir("st_fp8");
  const std::string data = {'\x38', '\xc4', '\x00', '\x7e'};  // 1, -3, 0, 448
  write_file(dir / "model.safetensors",
             R"({"w": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 4]}})", data);
  const Checkpoint ckpt(dir);
  EXPECT_EQ(ckpt.get("w", {2, 2}).dtype, TensorDType::kF8E4M3);
  EXPECT_EQ(ckpt.get("w", {2, 2}).to_float(), (std::vector<float>{1.f, -3.f, 0.f, 448.f}));
  write_file(dir / "model.safetensors",
             R"({"w": {"dtype": "F8_E4M3", "shape": [2, 2], "data_offsets": [0, 3]}})", data);
  expect_error([&] { Checkpoint c(dir); }, "should hold 4 bytes, not 3");
}

TEST(ModelConfig, SyntheticShapesAreTheRealModels) {
  // Parameter counts of the published checkpoints.
  EXPECT_NEAR(ModelConfig::synthetic("llama2-7b").parameter_count() / 1e9, 6.74, 0.01);
  EXPECT_NEAR(ModelConfig::synthetic("llama3-8b").parameter_count() / 1e9, 8.03, 0.01);
  EXPECT_NEAR(ModelConfig::synthetic("llama3-70b").parameter_count() / 1e9, 70.55, 0.01);
  // The mixtures of experts count every expert (30.5B and 46.7B as published).
  EXPECT_NEAR(ModelConfig::synthetic("qwen3-30b-a3b").parameter_count() / 1e9, 30.53, 0.01);
  EXPECT_NEAR(ModelConfig::synthetic("mixtral-8x7b").parameter_count() / 1e9, 46.70, 0.01);
  EXPECT_NEAR(ModelConfig::synthetic("qwen2.5-7b").parameter_count() / 1e9, 7.62, 0.01);
  EXPECT_NEAR(ModelConfig::synthetic("qwen2.5-14b").parameter_count() / 1e9, 14.77, 0.01);
  // Gemma 3 27B's language model (27B as published), five sliding layers to one global.
  const ModelConfig gemma = ModelConfig::synthetic("gemma3-27b");
  EXPECT_NEAR(gemma.parameter_count() / 1e9, 27.0, 0.05);
  EXPECT_TRUE(gemma.gemma && gemma.qk_norm && gemma.tie_word_embeddings);
  EXPECT_TRUE(gemma.is_sliding(0) && gemma.is_sliding(4) && !gemma.is_sliding(5));
  EXPECT_TRUE(gemma.has_sliding_layers());
  // Gemma 3 12B's language model (head_dim 256).
  const ModelConfig gemma12 = ModelConfig::synthetic("gemma3-12b");
  EXPECT_NEAR(gemma12.parameter_count() / 1e9, 11.77, 0.05);
  EXPECT_EQ(gemma12.head_dim, 256);
  const ModelConfig qwen3 = ModelConfig::synthetic("qwen3-8b");
  EXPECT_EQ(qwen3.parameter_count(), 8190735360);  // Qwen3-8B's safetensors, to the parameter
  EXPECT_TRUE(qwen3.qk_norm);
  EXPECT_FALSE(qwen3.qkv_bias);
  EXPECT_FALSE(qwen3.tie_word_embeddings);
  expect_error([] { ModelConfig::synthetic("gpt-5"); }, "known: llama2-7b");
}

TEST(ModelConfig, SyntheticFp8ShapesStoreProjectionsInOneByte) {
  const ModelConfig bf16 = ModelConfig::synthetic("llama3-8b");
  const ModelConfig fp8 = ModelConfig::synthetic("llama3-8b-fp8");
  EXPECT_FALSE(bf16.fp8_weights);
  EXPECT_TRUE(fp8.fp8_weights);
  EXPECT_EQ(fp8.parameter_count(), bf16.parameter_count());
  // Llama-3-8B: 6.98 G projection parameters of 8.03 G; embeddings and LM head stay 16-bit.
  EXPECT_NEAR(fp8.projection_parameter_count() / 1e9, 6.98, 0.01);
  EXPECT_EQ(bf16.weight_bytes(), 2 * bf16.parameter_count());
  EXPECT_EQ(fp8.weight_bytes(), 2 * fp8.parameter_count() - fp8.projection_parameter_count());
  expect_error([] { ModelConfig::synthetic("gpt-5-fp8"); }, "NAME-fp8");
  expect_error([] { ModelConfig::synthetic("-fp8"); }, "known: llama2-7b");
}

}  // namespace
}  // namespace l2kv
