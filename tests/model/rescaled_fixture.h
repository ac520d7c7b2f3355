// A copy of a test fixture whose attention is rescaled without changing its function: K by 2^9
// (q_proj by 2^-9, so each q.k product is the same) and V by 2^-9 (o_proj by 2^9). Powers of two
// scale bf16 values and fp32 sums exactly (fp16 ones up to the q/v weights they push into fp16
// subnormals), so transformers' float32 reference still holds, but |K| now reaches past E4M3's
// 448 and most |V| fall below 2^-6: real checkpoints' magnitudes (Qwen2.5's K bias reaches the
// hundreds) in a model small enough to test fp8 KV scales on. With a per-head q/k norm (Qwen3)
// the projections' scale would be normalized away, so the norm weights carry it instead
// (k_norm by 2^9, q_norm by 2^-9): the same K, q.k products and 16-bit roundings.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "l2kv/core/dtype.h"
#include "l2kv/model/model_config.h"
#include "l2kv/model/safetensors.h"
#include "model/safetensors_writer.h"

namespace l2kv::testing {

inline constexpr float kRescale = 512.f;

// Writes the rescaled copy of the fixture folder `source` (every file but the safetensors, then
// one model.safetensors) to a fresh temporary folder and returns it; the caller removes it.
inline std::filesystem::path rescaled_fixture(const std::filesystem::path& source) {
  namespace fs = std::filesystem;
  const fs::path out = fs::temp_directory_path() / ("l2kv_rescaled_" + source.filename().string() +
                                                    "_" + std::to_string(::getpid()));
  fs::remove_all(out);
  fs::create_directories(out);
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  const bool qk_norm = ModelConfig::from_folder(source).qk_norm;
  auto factor = [&](const std::string& tensor) {
    for (const char* p : {"k_proj.weight", "k_proj.bias"})
      if (!qk_norm && ends_with(tensor, p)) return kRescale;
    for (const char* p : {"q_proj.weight", "q_proj.bias"})
      if (!qk_norm && ends_with(tensor, p)) return 1.f / kRescale;
    if (qk_norm && ends_with(tensor, "k_norm.weight")) return kRescale;
    if (qk_norm && ends_with(tensor, "q_norm.weight")) return 1.f / kRescale;
    for (const char* p : {"v_proj.weight", "v_proj.bias"})
      if (ends_with(tensor, p)) return 1.f / kRescale;
    return ends_with(tensor, "o_proj.weight") ? kRescale : 1.f;
  };
  nlohmann::json header = nlohmann::json::object();
  std::vector<uint8_t> data;
  for (const auto& entry : fs::directory_iterator(source)) {
    const std::string file = entry.path().filename().string();
    if (entry.path().extension() != ".safetensors") {
      if (file.find(".safetensors") == std::string::npos)  // not the shard index
        fs::copy_file(entry.path(), out / file);
      continue;
    }
    const SafetensorsFile shard(entry.path());
    for (const auto& [tensor, view] : shard.tensors()) {
      std::vector<uint8_t> bytes(view.data, view.data + view.bytes);
      const float f = factor(tensor);
      if (f != 1.f) {
        const std::vector<float> values = view.to_float();
        for (size_t i = 0; i < values.size(); ++i) {
          if (view.dtype == TensorDType::kF32) {
            const float scaled = values[i] * f;
            std::memcpy(bytes.data() + 4 * i, &scaled, 4);
          } else {
            const uint16_t bits = float_to_dtype_bits(
                view.dtype == TensorDType::kF16 ? DType::kFloat16 : DType::kBFloat16,
                values[i] * f);
            std::memcpy(bytes.data() + 2 * i, &bits, 2);
          }
        }
      }
      header[tensor] = {{"dtype", view.dtype_name},
                        {"shape", view.shape},
                        {"data_offsets", {data.size(), data.size() + bytes.size()}}};
      data.insert(data.end(), bytes.begin(), bytes.end());
    }
  }
  write_safetensors(out / "model.safetensors", header, data.data(), data.size());
  return out;
}

}  // namespace l2kv::testing
