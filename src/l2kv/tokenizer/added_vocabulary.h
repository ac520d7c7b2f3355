// Added tokens of tokenizer.json (special tokens such as <|im_start|> and added words): they
// are matched in the raw text before normalization and BPE, longest first, and never split.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace l2kv {

struct AddedToken {
  std::string content;
  int32_t id = 0;
  bool special = false;
  bool lstrip = false;  // swallow whitespace on the left of a match
  bool rstrip = false;  // swallow whitespace on the right
  bool single_word = false;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  explicit AddedVocabulary(const nlohmann::json& added_tokens);

  // A piece of input: either an added token (id >= 0) or text for the model (id == -1).
  struct Segment {
    std::string_view text;
    int32_t id;
  };
  std::vector<Segment> split(std::string_view text) const;

  const AddedToken* find(int32_t id) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  std::vector<AddedToken> tokens_;
  std::vector<std::vector<int>> by_first_byte_ =
      std::vector<std::vector<int>>(256);  // longest first
};

}  // namespace l2kv
