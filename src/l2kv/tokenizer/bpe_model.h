// The BPE model of tokenizer.json: vocabulary, ranked merges, byte fallback (<0xNN>), unknown
// token handling, ignore_merges; a cache of recently seen pieces keeps English text fast.
#pragma once

#include <cstdint>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace l2kv {

class BpeModel {
 public:
  // Throws l2kv::Error for a model that is not BPE or is malformed (a merge of unknown tokens).
  explicit BpeModel(const nlohmann::json& spec);

  // Appends the ids of one pre-tokenized piece.
  void tokenize(std::string_view piece, std::vector<int32_t>& ids) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token string of a vocabulary id, or empty when out of range.
  const std::string& id_to_token(int32_t id) const;
  int32_t vocab_size() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  struct Merge {
    int32_t rank;
    int32_t result;
  };
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void merge_symbols(std::vector<int32_t>& symbols) const;
  void tokenize_word(std::string_view word, std::vector<int32_t>& ids) const;
  void initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const;

  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  int32_t byte_ids_[256];  // <0xNN> tokens, -1 where absent
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  // SentencePiece-style vocabularies mark word starts with U+2581 and have no pre-tokenizer,
  // so a whole text is one BPE word. When no token holds the marker after another character,
  // no merge can cross a word start: splitting there is exact and lets the cache work.
  bool split_at_word_marker_ = false;

  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace l2kv
