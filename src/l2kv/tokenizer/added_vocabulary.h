// Added tokens of tokenizer.json (special tokens such as <|im_start|> and added words): they
// are matched in the raw text before normalization and BPE, longest first, and never split.
// Matching walks a byte trie of the tokens' contents, so its cost per text byte is bounded by
// the longest token, not by how many tokens share a first byte (Llama 3 has 256 "<|...|>").
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
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
  struct TrieNode {
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
    std::vector<int32_t> tokens;  // indices of the tokens whose content ends here, file order
  };
  int32_t child(int32_t node, unsigned char byte) const;  // -1 when none
  // The longest token matching `text` at `at` whose single_word condition holds, or null.
  const AddedToken* match_at(std::string_view text, size_t at) const;

  std::vector<AddedToken> tokens_;
  std::vector<TrieNode> trie_ = std::vector<TrieNode>(1);  // [0] is the root
  std::unordered_map<int32_t, int32_t> index_of_id_;       // first token of each id
};

}  // namespace l2kv
