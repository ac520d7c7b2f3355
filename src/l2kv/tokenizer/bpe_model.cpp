#include "l2kv/tokenizer/bpe_model.h"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/token_id_json.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv {
namespace {

constexpr size_t kCacheCapacity = 1 << 16;  // pieces; cleared when full
constexpr size_t kMaxCachedPieceBytes = 64;
constexpr std::string_view kWordMarker = "\xE2\x96\x81";  // U+2581

}  // namespace

BpeModel::BpeModel(const nlohmann::json& spec) {
  if (spec.value("type", "BPE") != "BPE")
    throw Error("tokenizer.json: model type '" + spec.value("type", "") +
                "' is not supported (BPE only)");
  if (!spec.value("continuing_subword_prefix", nlohmann::json()).is_null() &&
      !spec.at("continuing_subword_prefix").get<std::string>().empty())
    throw Error("tokenizer.json: BPE continuing_subword_prefix is not supported");
  if (!spec.value("end_of_word_suffix", nlohmann::json()).is_null() &&
      !spec.at("end_of_word_suffix").get<std::string>().empty())
    throw Error("tokenizer.json: BPE end_of_word_suffix is not supported");
  if (!spec.at("vocab").is_object())
    throw Error("tokenizer.json: the BPE vocab must be an object of token: id");
  for (const auto& [token, id] : spec.at("vocab").items()) {
    const int32_t i = token_id_from_json(id, "token '" + token + "'");
    vocab_.emplace(token, i);
    if (static_cast<size_t>(i) >= id_to_token_.size()) id_to_token_.resize(i + 1);
    id_to_token_[i] = token;
  }
  byte_fallback_ = spec.value("byte_fallback", false);
  fuse_unk_ = spec.value("fuse_unk", false);
  ignore_merges_ = spec.value("ignore_merges", false);
  if (spec.contains("unk_token") && spec.at("unk_token").is_string()) {
    const auto it = vocab_.find(spec.at("unk_token").get<std::string>());
    if (it != vocab_.end()) unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const auto it = vocab_.find(name);
    byte_ids_[b] = it == vocab_.end() ? -1 : it->second;
  }
  bool marker_inside = false;
  bool marker_seen = false;
  for (const auto& [token, id] : vocab_) {
    size_t lead = 0;
    while (token.compare(lead, kWordMarker.size(), kWordMarker) == 0) lead += kWordMarker.size();
    marker_seen |= lead > 0;
    marker_inside |= token.find(kWordMarker, lead) != std::string::npos;
  }
  split_at_word_marker_ = marker_seen && !marker_inside;
  int32_t rank = 0;
  const nlohmann::json merges = spec.value("merges", nlohmann::json::array());
  if (!merges.is_array()) throw Error("tokenizer.json: the BPE merges must be a list");
  for (const auto& m : merges) {
    std::string left, right;
    if (m.is_array()) {
      if (m.size() != 2 || !m.at(0).is_string() || !m.at(1).is_string())
        throw Error("tokenizer.json: a merge must be two strings, got " + m.dump().substr(0, 64));
      left = m.at(0).get<std::string>();
      right = m.at(1).get<std::string>();
    } else {
      if (!m.is_string())
        throw Error("tokenizer.json: a merge must be \"a b\" or [\"a\", \"b\"], got " +
                    m.dump().substr(0, 64));
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ', 1);
      if (space == std::string::npos) throw Error("tokenizer.json: malformed merge '" + s + "'");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    }
    const auto a = vocab_.find(left), b = vocab_.find(right), c = vocab_.find(left + right);
    if (a == vocab_.end() || b == vocab_.end() || c == vocab_.end())
      throw Error("tokenizer.json: merge '" + left + " " + right +
                  "' uses tokens missing from the vocabulary");
    merges_.emplace(pair_key(a->second, b->second), Merge{rank++, c->second});
  }
}

std::optional<int32_t> BpeModel::token_to_id(std::string_view token) const {
  const auto it = vocab_.find(std::string(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string& BpeModel::id_to_token(int32_t id) const {
  static const std::string empty;
  return id >= 0 && static_cast<size_t>(id) < id_to_token_.size() ? id_to_token_[id] : empty;
}

void BpeModel::initial_symbols(std::string_view piece, std::vector<int32_t>& symbols) const {
  bool previous_unk = false;
  for (size_t i = 0; i < piece.size();) {
    const size_t start = i;
    utf8::next(piece, i);
    const std::string ch(piece.substr(start, i - start));
    const auto it = vocab_.find(ch);
    if (it != vocab_.end()) {
      symbols.push_back(it->second);
      previous_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : ch) all &= byte_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : ch) symbols.push_back(byte_ids_[b]);
        previous_unk = false;
        continue;
      }
    }
    if (!unk_id_)
      throw Error("tokenizer: character '" + ch +
                  "' is not in the vocabulary and there is no unk_token");
    if (!(fuse_unk_ && previous_unk)) symbols.push_back(*unk_id_);
    previous_unk = true;
  }
}

// Repeatedly applies the lowest-ranked merge among adjacent symbols (HF's algorithm: a heap of
// candidate pairs over a linked list of symbols), O(n log n) in the piece length.
void BpeModel::merge_symbols(std::vector<int32_t>& symbols) const {
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return;
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t left, right;  // symbol ids when pushed, to detect stale entries
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  auto push = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    const auto it = merges_.find(pair_key(symbols[i], symbols[next[i]]));
    if (it != merges_.end()) heap.push({it->second.rank, i, symbols[i], symbols[next[i]]});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    const int i = c.pos;
    const int j = next[i];
    if (symbols[i] < 0 || j < 0 || symbols[i] != c.left || symbols[j] != c.right)
      continue;  // stale
    symbols[i] = merges_.at(pair_key(c.left, c.right)).result;
    symbols[j] = -1;
    next[i] = next[j];
    if (next[j] >= 0) prev[next[j]] = i;
    push(prev[i]);
    push(i);
  }
  int out = 0;
  for (int i = 0; i >= 0 && i < n; i = next[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

void BpeModel::tokenize(std::string_view piece, std::vector<int32_t>& ids) const {
  if (!split_at_word_marker_) return tokenize_word(piece, ids);
  // Words start at a marker that follows another character; a run of markers stays together.
  size_t word_start = 0;
  for (size_t i = kWordMarker.size(); i + kWordMarker.size() <= piece.size(); ++i) {
    if (piece.compare(i, kWordMarker.size(), kWordMarker) != 0) continue;
    if (piece.compare(i - kWordMarker.size(), kWordMarker.size(), kWordMarker) == 0) continue;
    tokenize_word(piece.substr(word_start, i - word_start), ids);
    word_start = i;
  }
  tokenize_word(piece.substr(word_start), ids);
}

void BpeModel::tokenize_word(std::string_view piece, std::vector<int32_t>& ids) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    const auto it = vocab_.find(std::string(piece));
    if (it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    const auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> symbols;
  initial_symbols(piece, symbols);
  merge_symbols(symbols);
  ids.insert(ids.end(), symbols.begin(), symbols.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();
    cache_.emplace(std::string(piece), std::move(symbols));
  }
}

}  // namespace l2kv
