// Writes a .safetensors file for the tests that make checkpoints of their own (tiny models, the
// rescaled fixtures): the header's length as 8 little-endian bytes, the header as JSON, then
// the tensors' bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace l2kv::testing {

inline void write_safetensors(const std::filesystem::path& path, const nlohmann::json& header,
                              const void* data, size_t bytes) {
  const std::string text = header.dump();
  const uint64_t length = text.size();
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(&length), 8);  // little-endian, as the format says
  f.write(text.data(), static_cast<std::streamsize>(text.size()));
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
}

}  // namespace l2kv::testing
