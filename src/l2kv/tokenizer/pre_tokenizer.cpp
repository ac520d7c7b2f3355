#include "l2kv/tokenizer/pre_tokenizer.h"

#include <nlohmann/json.hpp>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/byte_level.h"
#include "l2kv/tokenizer/regex.h"

namespace l2kv {
namespace {

// GPT-2's pattern, used by ByteLevel when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class SplitBehavior { kIsolated, kRemoved };

// Splits each piece at the regex matches; matches become pieces of their own (Isolated) or
// are dropped (Removed); the text between matches is kept.
std::vector<std::string> split_by(const Regex& regex, SplitBehavior behavior,
                                  const std::vector<std::string>& pieces) {
  std::vector<std::string> out;
  for (const std::string& piece : pieces) {
    size_t last = 0;
    for (const auto& [begin, end] : regex.find_all(piece)) {
      if (begin > last) out.emplace_back(piece, last, begin - last);
      if (behavior == SplitBehavior::kIsolated) out.emplace_back(piece, begin, end - begin);
      last = end;
    }
    if (last < piece.size()) out.emplace_back(piece, last);
  }
  return out;
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(const std::string& pattern, SplitBehavior behavior)
      : regex_(pattern), behavior_(behavior) {}
  std::vector<std::string> split(std::vector<std::string> pieces) const override {
    return split_by(regex_, behavior_, pieces);
  }

 private:
  Regex regex_;
  SplitBehavior behavior_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space),
        regex_(use_regex ? std::make_unique<Regex>(kGpt2Pattern) : nullptr) {}
  std::vector<std::string> split(std::vector<std::string> pieces) const override {
    if (add_prefix_space_ && !pieces.empty() && !pieces.front().starts_with(' '))
      pieces.front().insert(0, 1, ' ');
    if (regex_) pieces = split_by(*regex_, SplitBehavior::kIsolated, pieces);
    for (auto& p : pieces) p = byte_level::encode(p);
    return pieces;
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  std::vector<std::string> split(std::vector<std::string> pieces) const override {
    for (const auto& s : steps_) pieces = s->split(std::move(pieces));
    return pieces;
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec) {
  if (spec.is_null()) return nullptr;
  const std::string type = spec.value("type", "");
  if (type == "Split") {
    const auto& pattern = spec.at("pattern");
    if (!pattern.contains("Regex"))
      throw Error(
          "tokenizer.json: Split pre-tokenizer with a plain string pattern is not supported");
    if (spec.value("invert", false)) throw Error("tokenizer.json: inverted Split is not supported");
    const std::string behavior = spec.value("behavior", "");
    SplitBehavior b;
    if (behavior == "Isolated")
      b = SplitBehavior::kIsolated;
    else if (behavior == "Removed")
      b = SplitBehavior::kRemoved;
    else
      throw Error("tokenizer.json: Split behavior '" + behavior + "' is not supported");
    return std::make_unique<SplitPreTokenizer>(pattern.at("Regex").get<std::string>(), b);
  }
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(spec.value("add_prefix_space", false),
                                                   spec.value("use_regex", true));
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const auto& s : spec.at("pretokenizers"))
      if (auto p = make_pre_tokenizer(s)) steps.push_back(std::move(p));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  throw Error("tokenizer.json: unsupported pre-tokenizer type '" + type + "'");
}

}  // namespace l2kv
