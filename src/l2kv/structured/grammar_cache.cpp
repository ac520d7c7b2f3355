#include "l2kv/structured/grammar_cache.h"

#include "l2kv/core/error.h"

namespace l2kv::structured {

namespace {
constexpr size_t kMaskCacheBytes = size_t{2} << 20;  // what a grammar's mask cache may hold
}  // namespace

GrammarCache::GrammarCache(std::shared_ptr<const TokenVocabulary> vocabulary, size_t capacity,
                           size_t capacity_bytes)
    : vocabulary_(std::move(vocabulary)), capacity_(capacity), capacity_bytes_(capacity_bytes) {
  if (!vocabulary_) throw Error("GrammarCache: no vocabulary");
  if (capacity_ == 0) throw Error("GrammarCache: the capacity must be at least 1");
}

std::shared_ptr<const CompiledGrammar> GrammarCache::get(const std::string& key,
                                                         const std::function<Grammar()>& compile) {
  {
    std::lock_guard lock(mutex_);
    const auto it = entries_.find(key);
    if (it != entries_.end()) {
      order_.splice(order_.begin(), order_, it->second.position);
      return it->second.grammar;
    }
  }
  // Compiled outside the lock: a large schema does not hold up other requests. Two requests
  // with the same new schema may both compile it; the second keeps the first's.
  auto grammar = std::make_shared<const CompiledGrammar>(compile(), vocabulary_);
  std::lock_guard lock(mutex_);
  ++compilations_;
  const auto it = entries_.find(key);
  if (it != entries_.end()) return it->second.grammar;
  order_.push_front(key);
  const size_t bytes = grammar->grammar().memory_bytes() + kMaskCacheBytes;
  entries_.emplace(key, Entry{grammar, order_.begin(), bytes});
  bytes_ += bytes;
  while (entries_.size() > 1 && (entries_.size() > capacity_ || bytes_ > capacity_bytes_)) {
    const auto last = entries_.find(order_.back());
    bytes_ -= last->second.bytes;
    entries_.erase(last);
    order_.pop_back();
  }
  return grammar;
}

size_t GrammarCache::size() const {
  std::lock_guard lock(mutex_);
  return entries_.size();
}

size_t GrammarCache::bytes() const {
  std::lock_guard lock(mutex_);
  return bytes_;
}

int64_t GrammarCache::compilations() const {
  std::lock_guard lock(mutex_);
  return compilations_;
}

}  // namespace l2kv::structured
