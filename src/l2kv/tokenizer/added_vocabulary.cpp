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
  for (int i = 0; i < static_cast<int>(tokens_.size()); ++i)
    by_first_byte_[static_cast<unsigned char>(tokens_[i].content[0])].push_back(i);
  for (auto& list : by_first_byte_)
    std::stable_sort(list.begin(), list.end(), [&](int a, int b) {
      return tokens_[a].content.size() > tokens_[b].content.size();
    });
}

const AddedToken* AddedVocabulary::find(int32_t id) const {
  for (const auto& t : tokens_)
    if (t.id == id) return &t;
  return nullptr;
}

std::vector<AddedVocabulary::Segment> AddedVocabulary::split(std::string_view text) const {
  std::vector<Segment> out;
  size_t text_start = 0;  // start of the pending plain-text segment
  size_t i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (int index : by_first_byte_[static_cast<unsigned char>(text[i])]) {
      const AddedToken& t = tokens_[index];
      if (text.compare(i, t.content.size(), t.content) != 0) continue;
      if (t.single_word) {
        const bool left_ok = i == 0 || !is_word_byte(text[i - 1]);
        const size_t end = i + t.content.size();
        const bool right_ok = end >= text.size() || !is_word_byte(text[end]);
        if (!left_ok || !right_ok) continue;
      }
      hit = &t;
      break;
    }
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
