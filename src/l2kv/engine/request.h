// One request as the engine tracks it, from add_request to its final output: its tokens
// (prompt, then output), how many of them have K/V in the cache, its sampling parameters and
// seed, its place in the queues, and what it gathered since its last output. Token ids only:
// its text is made on the output side (OutputProcessor, run by the front ends).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "l2kv/engine/block_manager.h"
#include "l2kv/engine/engine.h"
#include "l2kv/sampling/sampling_params.h"
#include "l2kv/structured/grammar_matcher.h"

namespace l2kv {

enum class RequestStatus : uint8_t { kWaiting, kRunning, kFinished };

struct Request {
  Request(int64_t request_id, int64_t arrival_order, std::vector<int32_t> prompt,
          SamplingParams sampling, uint64_t resolved_seed);

  int64_t id = 0;
  int64_t arrival = 0;  // order of add_request
  // Prompt followed by output tokens, so one span covers any chunk, including a re-prefill
  // of prompt + output after a preemption.
  std::vector<int32_t> tokens;
  int32_t num_prompt_tokens = 0;
  SamplingParams params;
  uint64_t seed = 0;  // params.seed, or drawn by the engine
  RequestStatus status = RequestStatus::kWaiting;
  // Tokens whose K/V are in the cache. Back to 0 when preempted (recomputation).
  int32_t num_computed_tokens = 0;
  int32_t num_preemptions = 0;
  // Prefix caching: the hashes of the full blocks of `tokens` computed so far (they only
  // grow: tokens are only appended), and how many of the table's blocks were offered to the
  // cache (cache_block) since the table was made.
  std::vector<BlockHash> block_hashes;
  int32_t num_cached_blocks = 0;
  // GenerationRequest::cache_salt's salt_hash: the first block's parent (none without a salt).
  std::optional<BlockHash> salt;
  // n > 1 (GenerationRequest::share_prompt_with): a choice waiting for `prompt_leader` to
  // compute the shared prompt, outside the scheduler's queues; the leader lists its waiting
  // choices in `prompt_followers`.
  Request* prompt_leader = nullptr;
  std::vector<Request*> prompt_followers;
  // GenerationRequest::prompt_logprobs and prompt_only; the rows computed so far (position
  // 1 + i for row i) and whether they were delivered.
  int32_t prompt_logprobs = -1;
  bool prompt_only = false;
  std::vector<PromptLogprob> prompt_logprob_rows;
  bool prompt_logprobs_delivered = false;
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_reason;
  int32_t stop_token_id = -1;  // when a stop token id ended it
  // Structured outputs (GenerationRequest::grammar): the parse of the output so far.
  std::optional<structured::GrammarMatcher> matcher;
  // Why the matcher could not give this step's mask (its work bound): the request then ends
  // with this error when its token comes back, and the step's other rows go on.
  std::string mask_error;
  // params.allowed_token_ids as a token bitmask (bit t of word t / 32; empty when unset).
  std::vector<uint32_t> allowed_mask;
  // The tokens that would end the output (EOS unless ignore_eos, stop_token_ids), masked out of
  // sampling while fewer than min_tokens tokens are out, as vLLM does; empty without min_tokens.
  std::vector<int32_t> held_stop_tokens;

  // Asynchronous scheduling: `tokens` ends with this many placeholders for tokens that launched
  // steps sample (0-2); the newest is row `pending_row` of the last launched step's samples.
  int32_t num_pending_tokens = 0;
  int32_t pending_row = -1;

  // Streaming: tokens and logprobs gather here until the next callback.
  std::shared_ptr<const std::function<void(const RequestOutput&)>> on_output;
  std::vector<int32_t> pending_tokens;
  std::vector<SampledToken> pending_logprobs;

  int32_t num_tokens() const { return static_cast<int32_t>(tokens.size()); }
  int32_t num_output_tokens() const { return num_tokens() - num_prompt_tokens; }
  // Output tokens sampled and known on the host (placeholders of launched steps excluded).
  int32_t num_known_output_tokens() const { return num_output_tokens() - num_pending_tokens; }
  std::span<const int32_t> prompt() const {
    return std::span<const int32_t>(tokens).first(static_cast<size_t>(num_prompt_tokens));
  }
  std::span<const int32_t> output() const {
    return std::span<const int32_t>(tokens).subspan(static_cast<size_t>(num_prompt_tokens));
  }
  bool finished() const { return status == RequestStatus::kFinished; }
};

}  // namespace l2kv
