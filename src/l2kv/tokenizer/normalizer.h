// tokenizer.json normalizers: NFC, Prepend, Replace and Sequence of them.
#pragma once

#include <cstddef>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>

namespace l2kv {

class Normalizer {
 public:
  // Growth bound of normalize(): the text may become at most kMaxGrowth times its bytes plus
  // kSlackBytes. Real tokenizers grow a text about 3x at most (a space to "\xe2\x96\x81");
  // chained Replace steps of a hostile tokenizer.json could grow a prompt to gigabytes.
  static constexpr size_t kMaxGrowth = 8;
  static constexpr size_t kSlackBytes = 4096;

  virtual ~Normalizer() = default;
  // The normalized text; throws l2kv::Error where it would pass the growth bound (Replace and
  // Prepend before allocating it; NFC, which grows a text at most 3x, after).
  std::string normalize(std::string text) const {
    const size_t max_bytes = text.size() * kMaxGrowth + kSlackBytes;
    return normalize_within(std::move(text), max_bytes);
  }
  // One step (or a sequence of them) whose result may take at most `max_bytes`.
  virtual std::string normalize_within(std::string text, size_t max_bytes) const = 0;
};

// Builds the normalizer described by `spec` (null gives nullptr). Unsupported types throw
// l2kv::Error naming them.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec);

}  // namespace l2kv
