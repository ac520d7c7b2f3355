// Running a Grammar over a model's tokens. A GrammarMatcher is one request's parse state: the
// set of pushdown stacks (positions in the grammar, top last) that the text so far leaves
// alive, as in a nondeterministic LL parse; a byte advances every stack whose top is a byte
// set holding it, and rule references on top expand into their alternatives. The token mask
// walks the vocabulary in byte order (TokenVocabulary keeps it sorted with the prefix each
// token shares with the one before), so a prefix shared by many tokens is matched once and a
// dead prefix skips every token that starts with it. Masks are cached per parse state in the
// CompiledGrammar: inside a JSON string or number the state repeats, so most steps are a copy.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "l2kv/structured/grammar.h"

namespace l2kv::structured {

// The vocabulary as the grammar sees it: the bytes each token adds to the text. Tokens with no
// bytes (special tokens, ids the tokenizer does not use) are never allowed; the EOS ids are
// allowed exactly when the text is complete.
class TokenVocabulary {
 public:
  TokenVocabulary(std::vector<std::string> token_bytes, std::vector<int32_t> eos_ids);

  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  const std::string& bytes(int32_t id) const { return bytes_[id]; }
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  bool is_eos(int32_t id) const;
  // Token ids with bytes, in byte order, and how many leading bytes each shares with the
  // token before it in that order.
  const std::vector<int32_t>& sorted_ids() const { return sorted_; }
  const std::vector<int32_t>& shared_prefix() const { return shared_prefix_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<int32_t> eos_ids_;
  std::vector<int32_t> sorted_;
  std::vector<int32_t> shared_prefix_;
};

// 32-bit words of a token mask over `vocab_size` tokens: bit t % 32 of word t / 32 is token t.
inline int64_t mask_words(int64_t vocab_size) {
  return (vocab_size + 31) / 32;
}

// A grammar ready to constrain one vocabulary, with the cache of its masks. Shared by every
// request that uses the same constraint; thread-safe.
class CompiledGrammar {
 public:
  CompiledGrammar(Grammar grammar, std::shared_ptr<const TokenVocabulary> vocabulary);
  const Grammar& grammar() const { return grammar_; }
  const TokenVocabulary& vocabulary() const { return *vocabulary_; }

  // The cached mask of a parse state (by its key), or false.
  bool cached_mask(const std::string& key, std::span<uint32_t> mask) const;
  void cache_mask(const std::string& key, std::span<const uint32_t> mask) const;

 private:
  Grammar grammar_;
  std::shared_ptr<const TokenVocabulary> vocabulary_;
  mutable std::mutex mutex_;
  mutable std::unordered_map<std::string, std::vector<uint32_t>> masks_;
};

class GrammarMatcher {
 public:
  explicit GrammarMatcher(std::shared_ptr<const CompiledGrammar> grammar);

  // Advances over `bytes`; false (and no change) when the grammar does not allow them.
  bool accept_bytes(std::string_view bytes);
  // Advances over a token's bytes; an EOS id is accepted only when the text is complete, and
  // ends the match. False (no change) for a token the grammar does not allow.
  bool accept_token(int32_t id);
  // Writes the allowed tokens of the current state into `mask` (mask_words(vocab) words).
  // Returns how many tokens are allowed.
  int64_t fill_mask(std::span<uint32_t> mask) const;

  // The text so far is a complete sentence of the grammar (EOS may come now).
  bool accepting() const;
  // EOS was accepted.
  bool terminated() const { return terminated_; }
  // Bytes the grammar still allows next: false when only EOS (or nothing) may come.
  bool can_continue() const;

  using Stack = std::vector<int32_t>;
  using State = std::vector<Stack>;

 private:
  std::string state_key() const;

  std::shared_ptr<const CompiledGrammar> grammar_;
  State state_;
  bool terminated_ = false;
};

// The parse state after `byte` from `state` (sorted, distinct stacks); empty: not allowed.
// `work`, when given, is increased by the rule expansions and cycle checks it took.
GrammarMatcher::State advance_state(const Grammar& grammar, const GrammarMatcher::State& state,
                                    uint8_t byte, int64_t* work = nullptr);
// The start state of `grammar` (its root rule expanded).
GrammarMatcher::State initial_state(const Grammar& grammar);

// Whether `grammar` matches `text` entirely (tests and the schema compiler's checks).
bool grammar_matches(const Grammar& grammar, std::string_view text);

}  // namespace l2kv::structured
