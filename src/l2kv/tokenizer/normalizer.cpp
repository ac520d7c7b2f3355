#include "l2kv/tokenizer/normalizer.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#include <nlohmann/json.hpp>
#include <vector>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

// `max_bytes` came from the text before normalization (Normalizer::normalize), whose size it
// names beside the step's own input.
[[noreturn]] void too_long(const std::string& step, size_t in, size_t out, size_t max_bytes) {
  const size_t original = (max_bytes - Normalizer::kSlackBytes) / Normalizer::kMaxGrowth;
  throw Error("tokenizer.json's " + step + " normalizer would grow a text of " +
              std::to_string(in) + " bytes (" + std::to_string(original) +
              " before normalization) to " + std::to_string(out) + " bytes; at most " +
              std::to_string(max_bytes) + " (" + std::to_string(Normalizer::kMaxGrowth) +
              " times the bytes before normalization, plus " +
              std::to_string(Normalizer::kSlackBytes) + ")");
}

class NfcNormalizer : public Normalizer {
 public:
  NfcNormalizer() {
    UErrorCode status = U_ZERO_ERROR;
    nfc_ = icu::Normalizer2::getNFCInstance(status);
    if (U_FAILURE(status)) throw Error("ICU NFC normalizer unavailable");
  }
  std::string normalize_within(std::string text, size_t max_bytes) const override {
    bool ascii = true;
    for (unsigned char c : text) ascii &= c < 0x80;
    if (ascii) return text;  // ASCII is always NFC
    UErrorCode status = U_ZERO_ERROR;
    const icu::UnicodeString in = icu::UnicodeString::fromUTF8(text);
    if (nfc_->isNormalized(in, status) && U_SUCCESS(status)) return text;
    status = U_ZERO_ERROR;
    const icu::UnicodeString out = nfc_->normalize(in, status);
    if (U_FAILURE(status)) throw Error("NFC normalization failed");
    std::string result;
    out.toUTF8String(result);
    if (result.size() > max_bytes) too_long("NFC", text.size(), result.size(), max_bytes);
    return result;
  }

 private:
  const icu::Normalizer2* nfc_ = nullptr;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  std::string normalize_within(std::string text, size_t max_bytes) const override {
    if (text.empty()) return text;
    if (text.size() + prefix_.size() > max_bytes)
      too_long("Prepend", text.size(), text.size() + prefix_.size(), max_bytes);
    return prefix_ + text;
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::string from, std::string to)
      : from_(std::move(from)), to_(std::move(to)) {}
  std::string normalize_within(std::string text, size_t max_bytes) const override {
    if (from_.empty()) return text;
    if (to_.size() > from_.size()) {  // count the hits first: the result's size, unallocated
      size_t hits = 0;
      for (size_t at = text.find(from_); at != std::string::npos;
           at = text.find(from_, at + from_.size()))
        ++hits;
      const size_t grown = text.size() + hits * (to_.size() - from_.size());
      if (grown > max_bytes) too_long("Replace", text.size(), grown, max_bytes);
    }
    std::string out;
    out.reserve(text.size());
    size_t pos = 0, hit;
    while ((hit = text.find(from_, pos)) != std::string::npos) {
      out.append(text, pos, hit - pos);
      out += to_;
      pos = hit + from_.size();
    }
    out.append(text, pos);
    return out;
  }

 private:
  std::string from_, to_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  std::string normalize_within(std::string text, size_t max_bytes) const override {
    for (const auto& s : steps_) text = s->normalize_within(std::move(text), max_bytes);
    return text;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.value("type", "");
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  if (type == "Prepend")
    return std::make_unique<PrependNormalizer>(spec.at("prepend").get<std::string>());
  if (type == "Replace") {
    if (!spec.at("pattern").contains("String"))
      throw Error("tokenizer.json: Replace normalizer with a regex pattern is not supported");
    return std::make_unique<ReplaceNormalizer>(spec.at("pattern").at("String").get<std::string>(),
                                               spec.at("content").get<std::string>());
  }
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const auto& s : spec.at("normalizers"))
      if (auto n = make_normalizer(s)) steps.push_back(std::move(n));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  throw Error("tokenizer.json: unsupported normalizer type '" + type + "'");
}

}  // namespace l2kv
