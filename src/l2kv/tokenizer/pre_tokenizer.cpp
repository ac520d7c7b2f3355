#include "l2kv/tokenizer/pre_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/byte_level.h"
#include "l2kv/tokenizer/regex.h"

namespace l2kv {
namespace {

// GPT-2's pattern, used by ByteLevel when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// What a Split does with each match (Hugging Face's SplitDelimiterBehavior): a piece of its own
// (Isolated), dropped (Removed), appended to the text before it (MergedWithPrevious) or
// prepended to the text after it (MergedWithNext), or runs of matches kept together as one
// piece (Contiguous).
enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A piece cut into consecutive segments, each a match or the text between matches.
struct Segment {
  size_t begin, end;
  bool match;
};

std::vector<Segment> segments_of(const Regex& regex, const std::string& piece) {
  std::vector<Segment> segments;
  size_t last = 0;
  for (const auto& [begin, end] : regex.find_all(piece)) {
    if (begin > last) segments.push_back({last, begin, false});
    segments.push_back({begin, end, true});
    last = end;
  }
  if (last < piece.size()) segments.push_back({last, piece.size(), false});
  return segments;
}

// Hugging Face's merging rules: a match joins its neighbour only when that neighbour is not a
// match itself (MergedWith*); Contiguous joins neighbours of the same kind.
std::vector<Segment> merged(std::vector<Segment> segments, SplitBehavior behavior) {
  if (behavior == SplitBehavior::kMergedWithNext) {
    std::reverse(segments.begin(), segments.end());
    for (Segment& s : segments) std::swap(s.begin, s.end);  // walk it as MergedWithPrevious
  }
  std::vector<Segment> out;
  bool previous_match = false;
  for (const Segment& s : segments) {
    const bool join = behavior == SplitBehavior::kContiguous ? s.match == previous_match
                                                             : s.match && !previous_match;
    if (join && !out.empty())
      out.back().end = s.end;
    else
      out.push_back({s.begin, s.end, false});
    previous_match = s.match;
  }
  if (behavior == SplitBehavior::kMergedWithNext) {
    std::reverse(out.begin(), out.end());
    for (Segment& s : out) std::swap(s.begin, s.end);
  }
  return out;
}

// Splits each piece at the regex matches as `behavior` says; the text between matches is kept.
std::vector<std::string> split_by(const Regex& regex, SplitBehavior behavior,
                                  const std::vector<std::string>& pieces) {
  std::vector<std::string> out;
  for (const std::string& piece : pieces) {
    std::vector<Segment> segments = segments_of(regex, piece);
    if (behavior == SplitBehavior::kMergedWithPrevious ||
        behavior == SplitBehavior::kMergedWithNext || behavior == SplitBehavior::kContiguous)
      segments = merged(std::move(segments), behavior);
    for (const Segment& s : segments)
      if (!(behavior == SplitBehavior::kRemoved && s.match))
        out.emplace_back(piece, s.begin, s.end - s.begin);
  }
  return out;
}

// A regex matching `literal` exactly (Split's {"String": ...} patterns): every ASCII character
// that is not a letter or digit is escaped, which PCRE2 reads as that character.
std::string escaped_literal(const std::string& literal) {
  std::string out;
  for (const char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out += '\\';
    out += c;
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
    std::string regex;
    if (pattern.contains("Regex"))
      regex = pattern.at("Regex").get<std::string>();
    else if (pattern.contains("String") && pattern.at("String").get<std::string>().empty())
      return std::make_unique<SequencePreTokenizer>(
          std::vector<std::unique_ptr<PreTokenizer>>{});  // matches nothing: splits nothing
    else if (pattern.contains("String"))
      regex = escaped_literal(pattern.at("String").get<std::string>());
    else
      throw Error("tokenizer.json: Split pre-tokenizer pattern is neither Regex nor String");
    if (spec.value("invert", false)) throw Error("tokenizer.json: inverted Split is not supported");
    const std::string behavior = spec.value("behavior", "");
    SplitBehavior b;
    if (behavior == "Isolated")
      b = SplitBehavior::kIsolated;
    else if (behavior == "Removed")
      b = SplitBehavior::kRemoved;
    else if (behavior == "MergedWithPrevious")
      b = SplitBehavior::kMergedWithPrevious;
    else if (behavior == "MergedWithNext")
      b = SplitBehavior::kMergedWithNext;
    else if (behavior == "Contiguous")
      b = SplitBehavior::kContiguous;
    else
      throw Error("tokenizer.json: Split behavior '" + behavior + "' is not supported");
    return std::make_unique<SplitPreTokenizer>(regex, b);
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
