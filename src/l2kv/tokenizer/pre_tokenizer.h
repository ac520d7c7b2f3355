// tokenizer.json pre-tokenizers: Split (a Unicode regex or a literal string, with Hugging
// Face's five delimiter behaviours), ByteLevel, Sequence. Each refines a list of pieces; BPE
// then runs on every piece separately.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace l2kv {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual std::vector<std::string> split(std::vector<std::string> pieces) const = 0;
};

// Builds the pre-tokenizer described by `spec` (null gives nullptr); unsupported types or
// behaviours throw l2kv::Error naming them.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec);

}  // namespace l2kv
