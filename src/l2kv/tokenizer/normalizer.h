// tokenizer.json normalizers: NFC, Prepend, Replace and Sequence of them.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>

namespace l2kv {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual std::string normalize(std::string text) const = 0;
};

// Builds the normalizer described by `spec` (null gives nullptr). Unsupported types throw
// l2kv::Error naming them.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec);

}  // namespace l2kv
