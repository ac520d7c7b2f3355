// The engine: requests in, token ids out. One step at a time:
//   scheduler.schedule() -> StepInput -> runner.execute() -> sampled tokens
//   -> append, stop checks on token ids, stream -> scheduler.update()
// Text and stop strings are the front ends' (output_processor.h): they detokenize what the
// engine streams and abort a request whose text meets a stop string.
// Single-threaded: the caller drives step() (the CLI in a loop, the server from one engine
// thread). Any number of requests may be in flight; each gets its output through its callback.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "l2kv/engine/finish_reason.h"
#include "l2kv/engine/model_runner.h"
#include "l2kv/sampling/sampling_params.h"

namespace l2kv {

class Tokenizer;
namespace structured {
class CompiledGrammar;
}

struct EngineConfig {
  // Tokens per KV block. 32: the wgmma prefill kernel copies K and V one block per TMA box, and
  // 16-token boxes made it 14-16 % slower (bench/NOTES.md); decode does not mind either size.
  int32_t block_size = 32;
  int32_t max_num_seqs = 256;             // sequences running at once
  int32_t max_num_batched_tokens = 2048;  // tokens per step (prompt chunks + decodes)
  int32_t max_model_len = 0;              // prompt + output; 0 = the model's max positions
  int32_t num_kv_blocks = 0;              // 0 = as many as fit
  double gpu_memory_utilization = 0.9;
  uint64_t seed = 0;  // draws the seeds of requests that set none
  // Automatic prefix caching: a request reuses the K/V of whole blocks earlier requests
  // computed for the same leading tokens (see BlockManager and Scheduler).
  bool enable_prefix_caching = true;
  // Asynchronous scheduling (vLLM's --async-scheduling): step N + 1 is planned and launched
  // while the device still runs step N, whose sampled tokens become step N + 1's inputs on the
  // device; the host learns of step N's stops while N + 1 runs, and a request that stopped
  // there drops the token N + 1 computed for it. A step whose next one needs its tokens on the
  // host first (structured outputs, penalties, token masks, prompt logprobs) is waited for
  // before the next is planned. The tokens are those of synchronous steps where the batches
  // are (a stopped request runs one more step, which may move a GPU kernel's rounding).
  bool async_scheduling = false;
};

// Refuses a configuration that would stall, starve or deadlock, with an l2kv::Error naming the
// flag(s) to change: max_model_len above the model's positions, fewer batched tokens than
// sequences, a pool that cannot hold one max_model_len request or fewer blocks than sequences.
// `config.max_model_len` must be resolved (non-zero); num_kv_blocks 0 (the pool is not sized
// yet) skips the pool's checks. The Engine calls it before and after sizing the pool, so
// generate, bench and serve refuse the same configurations.
void validate_engine_config(const EngineConfig& config, const ModelConfig& model);

// What a request has produced since its last callback (streaming) and, when finished, why.
struct RequestOutput {
  int64_t request_id = 0;
  std::vector<int32_t> new_tokens;
  // Filled by the output side (OutputProcessor): detokenized, stop strings removed. The engine
  // leaves it empty.
  std::string new_text;
  std::vector<SampledToken> new_logprobs;  // one per new token when logprobs >= 0
  // GenerationRequest::prompt_logprobs: one per prompt token after the first, in the first
  // output only.
  std::vector<PromptLogprob> prompt_logprobs;
  bool finished = false;
  FinishReason finish_reason = FinishReason::kNone;
  // The stop token id (engine) or stop string (OutputProcessor) that ended it; empty for EOS.
  std::string stop_reason;
  int32_t stop_token_id = -1;  // the stop token id of stop_reason as a number; -1 for a string
  std::string error;           // for kError
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;  // total so far
};

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams params;
  std::function<void(const RequestOutput&)> on_output;  // called from step()
  // n > 1 with one prefill: the id of an unfinished request with the same prompt that has not
  // sampled yet (the group's first choice). This one then waits until that request has
  // computed the prompt and starts on its blocks: every full block before the prompt's last
  // token is shared, the rest (at most one block) computed again, so each choice gets its own
  // last-token logits without copying a block. -1, or a request that does not qualify: the
  // prompt is prefilled as any other (prefix caching may still find it).
  int64_t share_prompt_with = -1;
  // Prompt logprobs (vLLM's prompt_logprobs): -1 none; N >= 0: for every prompt token after
  // the first, its log-probability given those before it, its rank and the N most likely
  // tokens there, in RequestOutput::prompt_logprobs of the first output. Such a request takes
  // no cached prefix and shares no prefill (every row is computed). Refused by a runner
  // without supports_prompt_logprobs().
  int32_t prompt_logprobs = -1;
  // vLLM's cache_salt: when not empty, the request's blocks are cached and found under this
  // salt only, so requests of different salts (tenants) never reuse each other's prefixes.
  std::string cache_salt;
  // Only the prompt (max_tokens 0 with echo): the request ends with "length" once its prompt is
  // computed, with no output token; params.max_tokens is not used.
  bool prompt_only = false;
  // Structured outputs: every sampled token must continue a sentence of this grammar (its
  // vocabulary the model's), and EOS comes only once the text is complete. Each step the
  // runner has the request's allowed tokens computed on the host (StepSequence::
  // fill_allowed_tokens; on the GPU while the forward runs); requests without a grammar pay
  // nothing. Not with ignore_eos or min_tokens.
  std::shared_ptr<const structured::CompiledGrammar> grammar;
};

struct EngineStats {
  int32_t running = 0, waiting = 0;
  int32_t kv_blocks_total = 0, kv_blocks_free = 0;
  int32_t kv_blocks_cached = 0;  // of the free ones, those still holding a cached prefix
  int64_t prompt_tokens = 0, generation_tokens = 0;  // totals processed
  int64_t preemptions = 0, steps = 0;
  // Prefix caching (0 when off): tokens of the requests admitted (re-admissions after a
  // preemption included) and, of those, the tokens found in the cache.
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0;
};

class Engine {
 public:
  // `tokenizer` (may be null) must outlive the engine; only its EOS token's id is used. EOS ids
  // come from the model config (config.json and generation_config.json).
  Engine(std::unique_ptr<ModelRunner> runner, const Tokenizer* tokenizer, EngineConfig config);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request; returns its id. Throws l2kv::Error (nothing queued) for
  // invalid sampling values, token ids outside the vocabulary, an empty prompt, or a prompt
  // that could never run (longer than max_model_len or than the whole KV pool), and for stop
  // strings (SamplingParams::stop): they are the output side's (OutputProcessor, which the
  // caller runs on the outputs), so a request that carries them here is refused rather than
  // having them ignored.
  int64_t add_request(GenerationRequest request);

  // Aborts a request: its callback gets a finished output with kAbort and its blocks return
  // to the pool at once. Unknown or finished ids are ignored.
  void abort(int64_t request_id);

  bool has_unfinished() const;
  // Why the engine can run nothing more: the runner reported its device lost (a sticky CUDA
  // error) after a failed step. Empty while healthy. Once set, every unfinished request has
  // ended with kError and this reason, and add_request() refuses new ones.
  const std::string& failure() const;
  // Runs one step (schedule, execute, postprocess). Returns false when there was nothing to do.
  bool step();
  // Steps until every request has finished.
  void run_until_idle();

  EngineStats stats() const;
  const EngineConfig& config() const;  // with max_model_len and num_kv_blocks resolved
  ModelRunner& runner();
  // The tokens that end a generation (unless ignore_eos): the model config's eos_token_ids and
  // the tokenizer's EOS token, as vLLM does; a structured output's grammar ends on them.
  const std::vector<int32_t>& eos_token_ids() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace l2kv
