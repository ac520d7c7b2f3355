#include "l2kv/tokenizer/added_vocabulary.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/token_id_json.h"

namespace l2kv {
namespace {

bool is_space(unsigned char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
bool is_word_byte(unsigned char c) {
  return std::isalnum(c) || c == '_' || c >= 0x80;
}

// Where `byte`'s edge is, or would go, among a trie node's children (sorted by byte).
template <typename Children>
auto edge_at(Children& children, unsigned char byte) {
  return std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{0}),
                          [](const auto& a, const auto& b) { return a.first < b.first; });
}

}  // namespace

AddedVocabulary::AddedVocabulary(const nlohmann::json& added_tokens) {
  for (const auto& t : added_tokens) {
    AddedToken token;
    token.content = t.at("content").get<std::string>();
    token.id = token_id_from_json(t.at("id"), "added token '" + token.content + "'");
    token.special = t.value("special", false);
    token.lstrip = t.value("lstrip", false);
    token.rstrip = t.value("rstrip", false);
    token.single_word = t.value("single_word", false);
    if (token.content.empty()) throw Error("tokenizer.json: an added token has empty content");
    tokens_.push_back(std::move(token));
  }
  for (int32_t i = 0; i < static_cast<int32_t>(tokens_.size()); ++i) {
    index_of_id_.emplace(tokens_[i].id, i);
    int32_t node = 0;
    for (const char c : tokens_[i].content) {
      const auto byte = static_cast<unsigned char>(c);
      auto& children = trie_[node].children;
      auto it = edge_at(children, byte);
      if (it == children.end() || it->first != byte) {
        const auto next = static_cast<int32_t>(trie_.size());
        it = children.insert(it, {byte, next});
        trie_.emplace_back();  // invalidates `children`, not the value copied below
        node = next;
      } else {
        node = it->second;
      }
    }
    trie_[node].tokens.push_back(i);
  }
}

const AddedToken* AddedVocabulary::find(int32_t id) const {
  const auto it = index_of_id_.find(id);
  return it == index_of_id_.end() ? nullptr : &tokens_[it->second];
}

int32_t AddedVocabulary::child(int32_t node, unsigned char byte) const {
  const auto& children = trie_[node].children;
  const auto it = edge_at(children, byte);
  return it == children.end() || it->first != byte ? -1 : it->second;
}

const AddedToken* AddedVocabulary::match_at(std::string_view text, size_t at) const {
  // Nodes on the path where some token ends, shortest first.
  std::vector<int32_t> ends;
  int32_t node = 0;
  for (size_t k = at; k < text.size(); ++k) {
    node = child(node, static_cast<unsigned char>(text[k]));
    if (node < 0) break;
    if (!trie_[node].tokens.empty()) ends.push_back(node);
  }
  for (auto e = ends.rbegin(); e != ends.rend(); ++e) {
    for (const int32_t index : trie_[*e].tokens) {
      const AddedToken& t = tokens_[index];
      if (t.single_word) {
        const bool left_ok = at == 0 || !is_word_byte(text[at - 1]);
        const size_t end = at + t.content.size();
        const bool right_ok = end >= text.size() || !is_word_byte(text[end]);
        if (!left_ok || !right_ok) continue;
      }
      return &t;
    }
  }
  return nullptr;
}

std::vector<AddedVocabulary::Segment> AddedVocabulary::split(std::string_view text) const {
  std::vector<Segment> out;
  size_t text_start = 0;  // start of the pending plain-text segment
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* hit = match_at(text, i);
    if (hit == nullptr) {
      ++i;
      continue;
    }
    size_t plain_end = i;
    if (hit->lstrip)
      while (plain_end > text_start && is_space(text[plain_end - 1])) --plain_end;
    if (plain_end > text_start)
      out.push_back({text.substr(text_start, plain_end - text_start), -1});
    out.push_back({text.substr(i, hit->content.size()), hit->id});
    i += hit->content.size();
    if (hit->rstrip)
      while (i < text.size() && is_space(text[i])) ++i;
    text_start = i;
  }
  if (text_start < text.size()) out.push_back({text.substr(text_start), -1});
  return out;
}

}  // namespace l2kv
