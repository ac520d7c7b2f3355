#include "l2kv/cli/bench_serve_workload.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>

#include "l2kv/core/error.h"

namespace l2kv::cli {
namespace {

using nlohmann::ordered_json;

// Words of one token each in most vocabularies: a chat prompt of input_len words.
constexpr const char* kWords[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "that",  "for",   "it",    "as",
    "was",   "with",  "be",    "by",    "on",    "not",   "he",    "this",  "are",   "or",
    "his",   "from",  "at",    "which", "but",   "have",  "an",    "had",   "they",  "you",
    "were",  "their", "one",   "all",   "we",    "can",   "her",   "has",   "there", "been",
    "if",    "more",  "when",  "will",  "would", "who",   "so",    "no",    "time",  "water",
    "house", "light", "river", "stone", "green", "small", "world", "music", "night", "paper"};

}  // namespace

void validate_workload(const WorkloadOptions& o, bool chat) {
  const int64_t requests = static_cast<int64_t>(o.num_prompts) * turns_per_conversation(o);
  if (requests > kMaxRequests)
    throw Error("--num-prompts " + std::to_string(o.num_prompts) +
                " conversations of --multi-turn " + std::to_string(o.multi_turn) + " turns make " +
                std::to_string(requests) + " requests; at most " + std::to_string(kMaxRequests));
  if (turns_per_conversation(o) > 1 && !chat && !o.random_text)
    throw Error(
        "--multi-turn with /v1/completions needs --random-text: later turns append the server's "
        "answers, which come back as text, and a token-id prompt cannot hold text (or use "
        "--endpoint /v1/chat/completions)");
  if (!o.extra_body.empty()) {
    const auto extra = ordered_json::parse(o.extra_body, nullptr, false);
    if (extra.is_discarded() || !extra.is_object())
      throw Error("--extra-body must be a JSON object, got: " + o.extra_body);
  }
}

int32_t turns_per_conversation(const WorkloadOptions& o) {
  return std::max(o.multi_turn, 1);
}

std::vector<std::vector<UserTurn>> make_conversations(const WorkloadOptions& o, bool chat) {
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> token(std::min(100, o.vocab_size - 1), o.vocab_size - 1);
  std::uniform_int_distribution<size_t> word(0, std::size(kWords) - 1);
  const bool text_prompt = chat || o.random_text;
  auto random_text = [&](int32_t words) {
    std::string text;
    for (int32_t w = 0; w < words; ++w) {
      if (w) text += ' ';
      text += kWords[word(rng)];
    }
    return text;
  };
  auto random_ids = [&](int32_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (auto& id : ids) id = token(rng);
    return ids;
  };
  // Prefixes first, then each conversation's turns in order: with one turn, the draws of the
  // single-turn workload.
  std::vector<UserTurn> prefixes;
  if (o.shared_prefix_len > 0)
    for (int32_t k = 0; k < o.num_prefixes; ++k) {
      UserTurn p;
      if (text_prompt)
        p.text = random_text(o.shared_prefix_len) + " ";
      else
        p.ids = random_ids(o.shared_prefix_len);
      prefixes.push_back(std::move(p));
    }
  const int32_t turns = turns_per_conversation(o);
  std::vector<std::vector<UserTurn>> conversations(static_cast<size_t>(o.num_prompts));
  for (int32_t i = 0; i < o.num_prompts; ++i) {
    auto& conversation = conversations[static_cast<size_t>(i)];
    for (int32_t t = 0; t < turns; ++t) {
      UserTurn u;
      if (text_prompt)
        u.text = random_text(o.input_len);
      else
        u.ids = random_ids(o.input_len);
      if (t == 0 && o.shared_prefix_len > 0) {
        const UserTurn& p = prefixes[static_cast<size_t>(i % o.num_prefixes)];
        u.text = p.text + u.text;
        u.ids.insert(u.ids.begin(), p.ids.begin(), p.ids.end());
      }
      conversation.push_back(std::move(u));
    }
  }
  return conversations;
}

std::string request_body(const WorkloadOptions& o, const std::string& model, bool chat,
                         const std::vector<UserTurn>& turns,
                         const std::vector<std::string>& answers) {
  if (answers.size() >= turns.size())
    throw Error("request_body: " + std::to_string(answers.size()) + " answers for " +
                std::to_string(turns.size()) + " turns");
  ordered_json body = {{"model", model}};
  if (chat) {
    ordered_json messages = ordered_json::array();
    for (size_t k = 0; k <= answers.size(); ++k) {
      messages.push_back({{"role", "user"}, {"content", turns[k].text}});
      if (k < answers.size()) messages.push_back({{"role", "assistant"}, {"content", answers[k]}});
    }
    body["messages"] = std::move(messages);
  } else if (!o.random_text) {
    if (!answers.empty()) throw Error("request_body: a token-id prompt cannot hold answers");
    body["prompt"] = turns[0].ids;
  } else {
    // A completion continues its prompt, so each answer follows its prompt directly.
    std::string prompt;
    for (size_t k = 0; k <= answers.size(); ++k) {
      if (k) prompt += '\n';
      prompt += turns[k].text;
      if (k < answers.size()) prompt += answers[k];
    }
    body["prompt"] = std::move(prompt);
  }
  body["max_tokens"] = o.output_len;
  if (chat) body["max_completion_tokens"] = o.output_len;
  if (o.ignore_eos) body["ignore_eos"] = true;
  body["temperature"] = 0.0;
  body["stream"] = true;
  body["stream_options"] = {{"include_usage", true}};
  if (!o.extra_body.empty()) {
    const auto extra = ordered_json::parse(o.extra_body, nullptr, false);
    if (extra.is_discarded() || !extra.is_object())
      throw Error("--extra-body must be a JSON object, got: " + o.extra_body);
    for (const auto& [key, value] : extra.items()) body[key] = value;
  }
  return body.dump();
}

}  // namespace l2kv::cli
