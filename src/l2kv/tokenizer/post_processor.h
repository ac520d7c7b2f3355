// tokenizer.json post-processors: TemplateProcessing (BOS/EOS around a single sequence),
// ByteLevel (nothing to do for ids) and Sequence.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <vector>

namespace l2kv {

class PostProcessor {
 public:
  // Reads `spec` (null = none); unsupported types throw l2kv::Error.
  explicit PostProcessor(const nlohmann::json& spec);
  // The ids of a single sequence with the template's special tokens added.
  std::vector<int32_t> apply(const std::vector<int32_t>& ids) const;
  // The ids apply() adds (before and after the sequence).
  const std::vector<int32_t>& prefix() const { return prefix_; }
  const std::vector<int32_t>& suffix() const { return suffix_; }

 private:
  void read(const nlohmann::json& spec);
  std::vector<int32_t> prefix_, suffix_;
  bool has_template_ = false;
};

}  // namespace l2kv
