// The requests `l2kv bench-serve` sends, kept pure so they are tested without a server: random
// prompts made up front from a seed (token ids, or words of one token each in most
// vocabularies), optionally behind shared prefixes, and multi-turn conversations whose turn k
// carries turns 1..k-1 with the server's answers before a new user message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace l2kv::cli {

// What shapes the prompts and request bodies (the workload flags of bench-serve).
struct WorkloadOptions {
  int32_t num_prompts = 100;  // requests, or conversations with multi_turn > 1
  int32_t input_len = 512;    // tokens (or words) of each user message
  // Request i's first user message starts with prefix i % num_prefixes (shared_prefix_len
  // random tokens or words).
  int32_t shared_prefix_len = 0;
  int32_t num_prefixes = 1;
  int32_t output_len = 128;
  // Turns per conversation: turn k sends the whole conversation so far (user messages and the
  // server's answers) plus a new user message; 0 or 1 = one request per prompt.
  int32_t multi_turn = 1;
  uint32_t seed = 0;
  int32_t vocab_size = 32000;
  bool random_text = false;  // completions: words instead of token ids
  bool ignore_eos = true;
  // A JSON object merged into every request body last (its fields replace the workload's):
  // response_format, structured_outputs, sampling parameters. Empty: none.
  std::string extra_body;
};

// The most requests one run sends (conversations times turns).
inline constexpr int64_t kMaxRequests = int64_t{1} << 24;

// Throws l2kv::Error naming the flags when the options cannot make a workload for the endpoint
// (`chat`: /v1/chat/completions).
void validate_workload(const WorkloadOptions& o, bool chat);

// Turns per conversation: multi_turn, at least 1.
int32_t turns_per_conversation(const WorkloadOptions& o);

// One user message: text (chat, or completions with random_text) or token ids.
struct UserTurn {
  std::string text;
  std::vector<int32_t> ids;
};

// conversations[c][k] is conversation c's user message of turn k + 1; the shared prefix, if
// any, starts each conversation's first message. The same seed gives the same messages; a
// single-turn workload gives the prompts of earlier versions for the same seed.
std::vector<std::vector<UserTurn>> make_conversations(const WorkloadOptions& o, bool chat);

// The JSON body of turn answers.size() + 1 of a conversation (answers: the server's answers to
// the turns before it, in order), streamed with usage. Chat: the turns as user and assistant
// messages; completions: the prompts and answers concatenated, each user message after a
// newline, or the token ids of a single-turn prompt.
std::string request_body(const WorkloadOptions& o, const std::string& model, bool chat,
                         const std::vector<UserTurn>& turns,
                         const std::vector<std::string>& answers);

}  // namespace l2kv::cli
