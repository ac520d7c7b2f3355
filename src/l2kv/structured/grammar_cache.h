// Compiled grammars by the constraint that made them, for one vocabulary: the server compiles
// a schema once and every later request with the same schema (and its mask cache) reuses it.
// Thread-safe; bounded by count and by bytes (the grammars plus the 2 MiB of masks each may
// cache): the least recently used grammar leaves first, the one just compiled always stays.
#pragma once

#include <cstddef>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "l2kv/structured/grammar_matcher.h"

namespace l2kv::structured {

class GrammarCache {
 public:
  explicit GrammarCache(std::shared_ptr<const TokenVocabulary> vocabulary, size_t capacity = 64,
                        size_t capacity_bytes = size_t{512} << 20);

  // The grammar of `key` (the constraint's kind and text), compiled by `compile` on a miss;
  // what `compile` throws propagates and nothing is cached.
  std::shared_ptr<const CompiledGrammar> get(const std::string& key,
                                             const std::function<Grammar()>& compile);

  const std::shared_ptr<const TokenVocabulary>& vocabulary() const { return vocabulary_; }
  size_t size() const;
  size_t bytes() const;          // of the grammars held, counted as the byte bound counts them
  int64_t compilations() const;  // misses so far

 private:
  std::shared_ptr<const TokenVocabulary> vocabulary_;
  size_t capacity_;
  size_t capacity_bytes_;
  size_t bytes_ = 0;
  mutable std::mutex mutex_;
  std::list<std::string> order_;  // most recent first
  struct Entry {
    std::shared_ptr<const CompiledGrammar> grammar;
    std::list<std::string>::iterator position;
    size_t bytes;
  };
  std::unordered_map<std::string, Entry> entries_;
  int64_t compilations_ = 0;
};

}  // namespace l2kv::structured
