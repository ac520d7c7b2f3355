// The engine loop. Sizes the KV pool with the runner, then each step: the scheduler's plan
// becomes a StepInput (block tables straight from the BlockManager), the runner executes it,
// and postprocessing appends each sampled token, checks stops on the host (stop token ids,
// EOS, lengths: token ids only; text and stop strings are the front ends', OutputProcessor),
// streams and frees the blocks of finished requests at once. Callbacks run at the end of each step
// (or of abort), after the engine's state is consistent, so they may call abort() or add_request().
//
// Pool: EngineConfig::num_kv_blocks counts physical blocks, the null block 0 included, so
// kv_blocks_total in the stats is num_kv_blocks - 1. Stats: prompt_tokens counts prompt
// positions run, recomputation after a preemption included; generation_tokens counts sampled
// tokens; preemptions counts each time a request was preempted. Blocks a request found in the
// prefix cache are not run, so they count in prefix_cache_hits and not in prompt_tokens.
// Seeds: a request without one gets the next draw of a std::mt19937_64 seeded with
// EngineConfig::seed, in add_request order (rejected requests draw nothing).
#include "l2kv/engine/engine.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <new>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>

#include "l2kv/core/error.h"
#include "l2kv/engine/block_manager.h"
#include "l2kv/engine/request.h"
#include "l2kv/engine/scheduler.h"
#include "l2kv/structured/grammar_matcher.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv {

namespace {

using Callback = std::function<void(const RequestOutput&)>;

std::string str(int64_t v) {
  return std::to_string(v);
}

// Fills in max_model_len from the model when it is 0, after the checks that need no model.
EngineConfig resolve(EngineConfig config, const ModelConfig& model) {
  if (config.max_model_len < 0)
    throw Error("max_model_len (--max-model-len) must not be negative, got " +
                str(config.max_model_len));
  const int64_t model_len = model.max_position_embeddings;
  if (config.max_model_len == 0) {
    if (model_len <= 0)
      throw Error("the model config gives no positive max_position_embeddings (got " +
                  str(model_len) + "): set --max-model-len");
    config.max_model_len = static_cast<int32_t>(std::min<int64_t>(model_len, 1 << 30));
  }
  validate_engine_config(config, model);
  return config;
}

}  // namespace

void validate_engine_config(const EngineConfig& c, const ModelConfig& model) {
  auto positive = [](int64_t value, const char* name, const char* flag) {
    if (value < 1)
      throw Error(std::string(name) + " (" + flag + ") must be at least 1, got " + str(value));
  };
  positive(c.block_size, "block_size", "--block-size");
  positive(c.max_num_seqs, "max_num_seqs", "--max-num-seqs");
  positive(c.max_num_batched_tokens, "max_num_batched_tokens", "--max-num-batched-tokens");
  positive(c.max_model_len, "max_model_len", "--max-model-len");
  if (c.num_kv_blocks < 0)
    throw Error("num_kv_blocks (--num-kv-blocks) must not be negative, got " +
                str(c.num_kv_blocks));
  if (!(c.gpu_memory_utilization > 0 && c.gpu_memory_utilization <= 1))
    throw Error("gpu_memory_utilization (--gpu-memory-utilization) must be in (0, 1], got " +
                std::to_string(c.gpu_memory_utilization));
  const int64_t model_len = model.max_position_embeddings;
  if (model_len > 0 && c.max_model_len > model_len)
    throw Error("max_model_len (--max-model-len) " + str(c.max_model_len) +
                " is longer than the model's max_position_embeddings " + str(model_len));
  // Every running sequence needs at least one token of each step's budget; with fewer, the
  // requests past the budget are admitted, hold their blocks and wait for older ones to end.
  if (c.max_num_batched_tokens < c.max_num_seqs)
    throw Error("max_num_batched_tokens (--max-num-batched-tokens) " +
                str(c.max_num_batched_tokens) + " is below max_num_seqs (--max-num-seqs) " +
                str(c.max_num_seqs) +
                ": one step could not advance every running sequence; raise "
                "--max-num-batched-tokens or lower --max-num-seqs");
  if (c.num_kv_blocks == 0) return;  // the pool is sized later; checked again then
  if (c.num_kv_blocks < 2)
    throw Error("num_kv_blocks (--num-kv-blocks) " + str(c.num_kv_blocks) +
                ": at least 2 are needed (block 0 is reserved)");
  const int64_t usable = int64_t{c.num_kv_blocks} - 1;
  const int64_t pool_tokens = usable * c.block_size;
  const char* grow_pool = "raise --num-kv-blocks (or --gpu-memory-utilization when it is 0)";
  // A request that may grow to max_model_len must fit the whole pool, or it would end early
  // (or preempt itself forever) below the length the server advertises.
  if (pool_tokens < c.max_model_len)
    throw Error("the KV pool holds " + str(usable) + " blocks of " + str(c.block_size) +
                " tokens (" + str(pool_tokens) +
                " tokens), less than one request of max_model_len (--max-model-len) " +
                str(c.max_model_len) + ": " + grow_pool + " or lower --max-model-len");
  // Each running sequence holds at least one block.
  if (c.max_num_seqs > usable)
    throw Error("max_num_seqs (--max-num-seqs) " + str(c.max_num_seqs) + " is more than the " +
                str(usable) + " blocks of the KV pool: at most " + str(usable) +
                " sequences could ever run; lower --max-num-seqs or " + grow_pool);
}

struct Engine::Impl {
  struct Delivery {
    std::shared_ptr<const Callback> callback;
    RequestOutput output;
  };

  std::unique_ptr<ModelRunner> runner;
  const Tokenizer* tokenizer;  // for its EOS token's id only
  EngineConfig config;
  std::vector<int32_t> eos_ids;
  std::optional<BlockManager> blocks;
  std::optional<Scheduler> scheduler;
  std::unordered_map<int64_t, std::unique_ptr<Request>> requests;  // unfinished ones
  std::mt19937_64 seed_rng;
  int64_t next_id = 0;
  // A request ends with "length" when prompt + output reaches this: max_model_len, or what
  // the whole pool holds (so a lone request can always grow, and preemption always ends).
  int64_t token_limit = 0;
  EngineStats totals;
  std::deque<Delivery> deliveries;
  bool delivering = false;
  bool in_step = false;
  std::string failure;        // set once the device is lost; see Engine::failure()
  int32_t num_followers = 0;  // n > 1 choices waiting for their leader's prompt

  // A launched step: its plan and input, kept until the runner's collect().
  struct LaunchedStep {
    StepPlan plan;
    StepInput input;
    // Per chunk that samples, in order: where its token goes in its request's tokens (the
    // placeholder put there at launch), or -1: appended when collected.
    std::vector<int32_t> token_slots;
    // The step after it needs its tokens on the host first (grammars, penalties, masks), or
    // its collect() reads its input (prompt logprobs).
    bool needs_host_tokens = false;
  };
  // Asynchronous scheduling: the step the device may still be running.
  std::optional<LaunchedStep> in_flight;
  // Finished requests a launched step may still name; freed once none does.
  std::vector<std::unique_ptr<Request>> retired;
  // A plan not yet launched while a collected step's outputs go out (run_step): the requests it
  // names outlive the callbacks, which may end them.
  const StepPlan* pending_plan = nullptr;

  Impl(std::unique_ptr<ModelRunner> model_runner, const Tokenizer* tok, EngineConfig cfg)
      : runner(std::move(model_runner)), tokenizer(tok) {
    if (!runner) throw Error("Engine: no model runner");
    const ModelConfig& model = runner->config();
    config = resolve(cfg, model);
    eos_ids = model.eos_token_ids;
    // A config without eos_token_id (synthetic models, some checkpoints) still stops at the
    // tokenizer's EOS; without it a completed grammar would allow no token at all.
    if (tokenizer && !tokenizer->eos_token().empty())
      if (const auto id = tokenizer->token_to_id(tokenizer->eos_token());
          id && *id >= 0 && *id < model.vocab_size &&
          std::find(eos_ids.begin(), eos_ids.end(), *id) == eos_ids.end())
        eos_ids.push_back(*id);
    seed_rng.seed(config.seed);
    const KvCacheSizing sizing =
        runner->prepare(config.block_size, config.max_num_batched_tokens, config.max_num_seqs,
                        config.max_model_len, config.gpu_memory_utilization);
    int64_t num_blocks = config.num_kv_blocks;
    const bool blocks_given = num_blocks != 0;
    if (num_blocks == 0) {
      if (sizing.bytes_per_block <= 0) throw Error("runner reported no KV block size");
      num_blocks = std::min<int64_t>(sizing.bytes_available / sizing.bytes_per_block,
                                     std::numeric_limits<int32_t>::max());
      if (num_blocks < 2)
        throw Error("KV pool: " + std::to_string(sizing.bytes_available) +
                    " bytes available hold " + std::to_string(num_blocks) + " blocks of " +
                    std::to_string(sizing.bytes_per_block) +
                    " bytes; at least 2 are needed (block 0 is reserved): raise "
                    "--gpu-memory-utilization or set --num-kv-blocks");
    }
    config.num_kv_blocks = static_cast<int32_t>(num_blocks);
    validate_engine_config(config, model);
    try {
      blocks.emplace(config.num_kv_blocks, config.block_size, config.enable_prefix_caching,
                     sizing.group_windows);
      runner->allocate_kv_cache(config.num_kv_blocks);
    } catch (const std::bad_alloc&) {
      throw Error("KV pool: " + std::to_string(config.num_kv_blocks) + " blocks of " +
                  std::to_string(sizing.bytes_per_block) + " bytes do not fit in memory: " +
                  (blocks_given ? "lower --num-kv-blocks, or leave it at 0 to size the pool "
                                  "from the memory there is"
                                : "lower --gpu-memory-utilization or set --num-kv-blocks"));
    }
    scheduler.emplace(SchedulerConfig{config.max_num_seqs, config.max_num_batched_tokens}, *blocks);
    // The longest sequence the whole pool can hold on its own (blocks_to_hold grows with it).
    int64_t lo = 0, hi = config.max_model_len;
    while (lo < hi) {
      const int64_t mid = (lo + hi + 1) / 2;
      if (fits_alone(mid)) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    token_limit = lo;
  }

  // Whether one sequence of `num_tokens` tokens fits the pool by itself.
  bool fits_alone(int64_t num_tokens) const {
    return blocks->blocks_to_hold(num_tokens, config.max_num_batched_tokens) <=
           blocks->num_usable();
  }

  int64_t add(GenerationRequest request) {
    if (!failure.empty()) throw Error("the engine can run no more requests: " + failure);
    const int64_t vocab = runner->config().vocab_size;
    const int64_t n = static_cast<int64_t>(request.prompt.size());
    if (n == 0) throw Error("the prompt is empty");
    for (int64_t i = 0; i < n; ++i)
      if (request.prompt[i] < 0 || request.prompt[i] >= vocab)
        throw Error("prompt token " + std::to_string(i) + " is id " +
                    std::to_string(request.prompt[i]) + ", outside the vocabulary of " +
                    std::to_string(vocab));
    request.params.validate(vocab);
    // The engine sees token ids only: stop strings given here would be silently ignored.
    if (!request.params.stop.empty())
      throw Error(
          "stop strings are applied to the text by the output side: give them to an "
          "OutputProcessor and leave SamplingParams::stop empty in the engine's request");
    if (request.prompt_logprobs < -1 || request.prompt_logprobs > kMaxLogprobs)
      throw Error("prompt_logprobs must be in [-1, " + std::to_string(kMaxLogprobs) + "], got " +
                  std::to_string(request.prompt_logprobs));
    if (request.prompt_logprobs >= 0 && !runner->supports_prompt_logprobs())
      throw Error("prompt logprobs are not supported on the " + runner->device_name() +
                  " backend yet");
    if (request.grammar) {
      if (request.grammar->vocabulary().size() != vocab)
        throw Error("the structured-output grammar is for a vocabulary of " +
                    std::to_string(request.grammar->vocabulary().size()) +
                    " tokens, the model has " + std::to_string(vocab));
      if (request.params.ignore_eos)
        throw Error("ignore_eos is not supported with structured outputs");
      if (request.params.min_tokens > 0)
        throw Error("min_tokens is not supported with structured outputs");
    }
    if (n > config.max_model_len)
      throw Error("the prompt has " + std::to_string(n) + " tokens, more than max_model_len " +
                  std::to_string(config.max_model_len));
    if (!fits_alone(n))
      throw Error("the prompt has " + std::to_string(n) + " tokens and needs " +
                  std::to_string(blocks->blocks_to_hold(n, config.max_num_batched_tokens)) +
                  " KV blocks of " + std::to_string(config.block_size) +
                  " tokens; the whole pool has " + std::to_string(blocks->num_usable()));
    const uint64_t seed = request.params.seed ? *request.params.seed : seed_rng();
    const int64_t id = next_id++;
    auto r = std::make_unique<Request>(id, id, std::move(request.prompt), std::move(request.params),
                                       seed);
    r->prompt_logprobs = request.prompt_logprobs;
    r->prompt_only = request.prompt_only;
    if (!request.cache_salt.empty()) r->salt = salt_hash(request.cache_salt);
    if (request.grammar) r->matcher.emplace(std::move(request.grammar));
    if (!r->params.allowed_token_ids.empty()) {
      r->allowed_mask.assign(static_cast<size_t>((runner->config().vocab_size + 31) / 32), 0u);
      for (const int32_t t : r->params.allowed_token_ids) r->allowed_mask[t >> 5] |= 1u << (t & 31);
    }
    if (r->params.min_tokens > 0) {
      r->held_stop_tokens = r->params.stop_token_ids;
      if (!r->params.ignore_eos)
        r->held_stop_tokens.insert(r->held_stop_tokens.end(), eos_ids.begin(), eos_ids.end());
      std::erase_if(r->held_stop_tokens,
                    [&](int32_t t) { return t < 0 || t >= runner->config().vocab_size; });
    }
    if (request.on_output)
      r->on_output = std::make_shared<const Callback>(std::move(request.on_output));
    Request* leader = prompt_leader_for(request.share_prompt_with, *r);
    if (leader) {
      r->prompt_leader = leader;
      leader->prompt_followers.push_back(r.get());
      ++num_followers;
    } else {
      scheduler->add(r.get());
    }
    requests.emplace(id, std::move(r));
    return id;
  }

  int64_t vocab_size() const { return runner->config().vocab_size; }

  // The request `r` may wait for (GenerationRequest::share_prompt_with), or null.
  Request* prompt_leader_for(int64_t leader_id, const Request& r) {
    if (leader_id < 0) return nullptr;
    const auto it = requests.find(leader_id);
    if (it == requests.end()) return nullptr;
    Request* leader = it->second.get();
    if (leader->prompt_leader || leader->num_output_tokens() > 0 || r.prompt_logprobs >= 0 ||
        leader->salt != r.salt || !std::ranges::equal(leader->prompt(), r.prompt()))
      return nullptr;
    return leader;
  }

  // The leader has computed its prompt: its followers join the waiting queue on its blocks.
  void fork_followers(Request& leader) {
    for (auto f = leader.prompt_followers.rbegin(); f != leader.prompt_followers.rend(); ++f) {
      (*f)->prompt_leader = nullptr;
      scheduler->add_forked(*f, leader);  // to the front: the first follower ends up first
    }
    num_followers -= static_cast<int32_t>(leader.prompt_followers.size());
    leader.prompt_followers.clear();
  }

  // A leader that ends before computing its prompt (abort, error): its followers queue as
  // requests of their own.
  void release_followers(Request& leader) {
    for (Request* f : leader.prompt_followers) {
      f->prompt_leader = nullptr;
      scheduler->add(f);
    }
    num_followers -= static_cast<int32_t>(leader.prompt_followers.size());
    leader.prompt_followers.clear();
  }

  // Moves what `r` gathered since its last callback into a delivery.
  void queue_output(Request& r) {
    Delivery d{r.on_output, {}};
    RequestOutput& out = d.output;
    out.request_id = r.id;
    out.new_tokens = std::move(r.pending_tokens);
    out.new_logprobs = std::move(r.pending_logprobs);
    if (r.prompt_logprobs >= 0 && !r.prompt_logprobs_delivered &&
        static_cast<int32_t>(r.prompt_logprob_rows.size()) == r.num_prompt_tokens - 1) {
      out.prompt_logprobs = std::move(r.prompt_logprob_rows);
      r.prompt_logprob_rows.clear();
      r.prompt_logprobs_delivered = true;
    }
    r.pending_tokens.clear();
    r.pending_logprobs.clear();
    out.finished = r.finished();
    out.finish_reason = r.finish_reason;
    out.stop_reason = r.stop_reason;
    out.stop_token_id = r.stop_token_id;
    out.prompt_tokens = r.num_prompt_tokens;
    out.completion_tokens = r.num_known_output_tokens();
    deliveries.push_back(std::move(d));
  }

  // Ends `r`: its blocks return to the pool now, its final output is queued, it is forgotten.
  void finish(Request& r, FinishReason reason, std::string stop_reason = {},
              std::string error = {}) {
    if (r.prompt_leader) {  // a follower still waiting for its leader
      std::erase(r.prompt_leader->prompt_followers, &r);
      r.prompt_leader = nullptr;
      --num_followers;
    }
    release_followers(r);
    r.status = RequestStatus::kFinished;
    r.finish_reason = reason;
    r.stop_reason = std::move(stop_reason);
    scheduler->remove(&r);
    queue_output(r);
    deliveries.back().output.error = std::move(error);
    const auto it = requests.find(r.id);
    retired.push_back(std::move(it->second));  // freed by free_retired()
    requests.erase(it);
  }

  // Frees the finished requests that no launched step (or pending plan) names any more.
  void free_retired() {
    if (!in_flight && !pending_plan) {
      retired.clear();
      return;
    }
    const auto names = [](const StepPlan* plan, const Request* r) {
      return plan != nullptr &&
             std::any_of(plan->chunks.begin(), plan->chunks.end(),
                         [&](const ScheduledChunk& c) { return c.request == r; });
    };
    std::erase_if(retired, [&](const std::unique_ptr<Request>& r) {
      return !names(in_flight ? &in_flight->plan : nullptr, r.get()) &&
             !names(pending_plan, r.get());
    });
  }

  // Puts a sampled token in place (`slot`: its placeholder's index, or -1: appended) and checks
  // the stop conditions of token ids, in vLLM's order: stop tokens (not within the first
  // min_tokens tokens), then length. A request that stops drops any later placeholder. Stop
  // strings are the output side's (OutputProcessor), which aborts the request when it finds one.
  void append(Request& r, int32_t slot, SampledToken sampled) {
    const int32_t token = sampled.token;
    if (!r.mask_error.empty()) {
      finish(r, FinishReason::kError, {}, r.mask_error);
      return;
    }
    if (r.matcher && !r.matcher->accept_token(token)) {
      // Only when the grammar allowed no token at all (the sampler then falls back to the
      // largest logit): no token of the vocabulary spells what the grammar needs next.
      finish(r, FinishReason::kError, {},
             "structured output: no token of the vocabulary continues the text the grammar "
             "requires (token " +
                 std::to_string(token) + " was sampled without being allowed)");
      return;
    }
    if (slot >= 0) {
      r.tokens[static_cast<size_t>(slot)] = token;
      --r.num_pending_tokens;
    } else {
      r.tokens.push_back(token);
    }
    const int32_t known = slot >= 0 ? slot + 1 : r.num_tokens();
    ++totals.generation_tokens;
    r.pending_tokens.push_back(token);
    if (r.params.logprobs >= 0) r.pending_logprobs.push_back(std::move(sampled));
    const int32_t produced = known - r.num_prompt_tokens;
    // The first min_tokens tokens cannot end the output (vLLM: stop tokens are masked out of
    // them, stop strings are looked for once the output is longer).
    const bool may_stop = produced > r.params.min_tokens;

    FinishReason reason = FinishReason::kNone;
    std::string stop_reason;
    if (may_stop && !r.params.ignore_eos &&
        std::find(eos_ids.begin(), eos_ids.end(), token) != eos_ids.end()) {
      reason = FinishReason::kStop;  // EOS: stop_reason stays empty, as vLLM's null
    } else if (may_stop && std::find(r.params.stop_token_ids.begin(), r.params.stop_token_ids.end(),
                                     token) != r.params.stop_token_ids.end()) {
      reason = FinishReason::kStop;
      stop_reason = std::to_string(token);
      r.stop_token_id = token;
    }
    if (reason == FinishReason::kNone && (produced >= r.params.max_tokens || known >= token_limit))
      reason = FinishReason::kLength;
    if (reason != FinishReason::kNone) {
      r.tokens.resize(static_cast<size_t>(known));  // the token a launched step computes after it
      r.num_pending_tokens = 0;
      finish(r, reason, std::move(stop_reason));
    } else {
      queue_output(r);
    }
  }

  // Runs the queued callbacks in order. A callback may abort or add requests; what that
  // queues runs after the deliveries already queued, so each request's outputs keep their
  // order (its final output last).
  void deliver() {
    if (delivering) return;
    delivering = true;
    try {
      while (!deliveries.empty()) {
        const Delivery d = std::move(deliveries.front());
        deliveries.pop_front();
        if (d.callback && *d.callback) (*d.callback)(d.output);
      }
    } catch (...) {
      delivering = false;
      throw;
    }
    delivering = false;
  }

  bool step() {
    if (in_step || delivering) throw Error("Engine::step called from inside a step or a callback");
    in_step = true;
    bool ran = false;
    try {
      ran = run_step();
    } catch (...) {
      in_step = false;
      throw;
    }
    in_step = false;
    free_retired();
    deliver();
    return ran;
  }

  // One step: plan, launch, then collect the step launched before it (asynchronous
  // scheduling) or this one.
  bool run_step() {
    // The plan needs the launched step's tokens on the host: it is collected first.
    const bool collected = in_flight && (!config.async_scheduling || in_flight->needs_host_tokens);
    if (collected) {
      collect_in_flight();
      if (config.async_scheduling) deliver();  // before this plan, as a synchronous step's
    }
    StepPlan plan;
    if (!scheduler->empty()) plan = scheduler->schedule();
    totals.preemptions += static_cast<int64_t>(plan.preempted.size());
    if (plan.empty()) {
      if (!in_flight) return collected;
      collect_in_flight();  // its requests wait for its tokens
      return true;
    }
    // A step with prompt chunks runs kernel by kernel: its hundreds of launches would queue
    // behind the running step and return only as that one drains, holding back the running
    // step's tokens (time to first token) for a gain of a fraction of a percent of a long step.
    // It is launched after the step before is collected and its outputs delivered (the launch
    // may take about as long as the device's run of this step), without the chunks of requests
    // that ended there or in the callbacks.
    if (in_flight && has_prompt_chunk(plan)) {
      collect_in_flight();
      pending_plan = &plan;
      try {
        deliver();
      } catch (...) {
        pending_plan = nullptr;
        throw;
      }
      pending_plan = nullptr;
      std::erase_if(plan.chunks, [](const ScheduledChunk& c) { return c.request->finished(); });
      if (plan.empty()) return true;
    }
    ++totals.steps;
    LaunchedStep next = make_step(std::move(plan));
    try {
      runner->launch(next.input);
    } catch (const std::exception& e) {
      if (in_flight) collect_in_flight();  // launched before, still running
      fail_step(next, e.what());
      return true;
    }
    if (config.async_scheduling) {
      // The device computes the tokens in stream order: later plans count them computed now
      // (their blocks go to the prefix cache once the step has run).
      scheduler->update(next.plan, /*offer_to_cache=*/false);
      if (!next.needs_host_tokens) add_placeholders(next);
    }
    if (in_flight) collect_in_flight();  // while `next` runs
    in_flight = std::move(next);
    // Synchronous, or nothing left to plan (every request of the step may have ended).
    if (!config.async_scheduling || scheduler->empty()) collect_in_flight();
    return true;
  }

  static bool has_prompt_chunk(const StepPlan& plan) {
    return std::any_of(plan.chunks.begin(), plan.chunks.end(),
                       [](const ScheduledChunk& c) { return c.num_tokens != 1 || !c.sample; });
  }

  // The runner's input for `plan`'s chunks.
  LaunchedStep make_step(StepPlan plan) {
    LaunchedStep step;
    step.plan = std::move(plan);
    StepInput& input = step.input;
    input.sequences.reserve(step.plan.chunks.size());
    for (const ScheduledChunk& c : step.plan.chunks) {
      Request& r = *c.request;
      StepSequence s;
      s.tokens = std::span<const int32_t>(r.tokens).subspan(static_cast<size_t>(c.start),
                                                            static_cast<size_t>(c.num_tokens));
      s.start_position = c.start;
      if (r.num_pending_tokens > 0 && c.start + c.num_tokens == r.num_tokens()) {
        if (r.num_pending_tokens != 1 || !in_flight)
          throw Error("engine: request " + str(r.id) + " planned with " +
                      str(r.num_pending_tokens) + " unknown tokens");
        s.pending_token_row = r.pending_row;
      }
      for (int32_t g = 0; g < blocks->num_groups(); ++g)
        s.block_tables.push_back(blocks->block_table(r.id, g));
      s.sample = c.sample;
      if (r.prompt_logprobs >= 0 && !r.prompt_logprobs_delivered) {
        // Row j of the chunk (position start + j) predicts prompt token start + j + 1: ask for
        // the tokens after the `have` known ones (after a preemption the chunk recomputes rows
        // it has), up to the chunk's end and the prompt's last token.
        const int32_t have = static_cast<int32_t>(r.prompt_logprob_rows.size());
        const int32_t last = std::min(c.start + c.num_tokens, r.num_prompt_tokens - 1);
        if (last > have && have >= c.start) {
          s.prompt_logprob_targets = std::span<const int32_t>(r.tokens).subspan(
              static_cast<size_t>(have + 1), static_cast<size_t>(last - have));
          s.prompt_logprobs_row = have - c.start;
          s.prompt_logprobs = r.prompt_logprobs;
          s.prompt_logprobs_out = &r.prompt_logprob_rows;
          step.needs_host_tokens = true;
        }
      }
      if (c.sample) {
        const bool penalized = r.params.penalized();
        // The history only for penalties (without them, a placeholder may end it).
        s.sampling = {&r.params,
                      r.seed,
                      r.num_output_tokens(),
                      penalized ? r.prompt() : std::span<const int32_t>{},
                      penalized ? r.output() : std::span<const int32_t>{},
                      {}};
        // Filled by the runner as late as it can (the matcher and the mask stay put): the
        // grammar's tokens, and of those the allowed_token_ids.
        // Before min_tokens the tokens that would end the output are masked out (vLLM's
        // min_tokens): the model says something else instead of an EOS that could not stop it.
        const std::vector<int32_t>* held =
            !r.held_stop_tokens.empty() && r.num_output_tokens() < r.params.min_tokens
                ? &r.held_stop_tokens
                : nullptr;
        if (r.matcher || !r.allowed_mask.empty() || held)
          s.fill_allowed_tokens = [matcher = r.matcher ? &*r.matcher : nullptr,
                                   allowed = &r.allowed_mask, held,
                                   error = &r.mask_error](std::span<uint32_t> mask) {
            if (matcher) {
              try {
                matcher->fill_mask(mask);
              } catch (const Error& e) {
                // Runs on the runner's threads: the request ends when its token comes back.
                std::fill(mask.begin(), mask.end(), 0u);
                *error = e.what();
              }
            } else {
              std::fill(mask.begin(), mask.end(), ~0u);
            }
            for (size_t w = 0; w < allowed->size() && w < mask.size(); ++w)
              mask[w] &= (*allowed)[w];
            if (held)
              for (const int32_t t : *held)
                if (static_cast<size_t>(t >> 5) < mask.size()) mask[t >> 5] &= ~(1u << (t & 31));
          };
        step.needs_host_tokens |= s.fill_allowed_tokens != nullptr || penalized;
        step.token_slots.push_back(-1);
      }
      input.sequences.push_back(s);
      totals.prompt_tokens +=
          std::max(0, std::min(c.start + c.num_tokens, r.num_prompt_tokens) - c.start);
    }
    return step;
  }

  // Asynchronous scheduling: each sampling request of a launched step gets a placeholder for
  // the token it will sample, so the next plan runs it, unless that token surely ends it (its
  // length) or it only wanted its prompt.
  void add_placeholders(LaunchedStep& step) {
    size_t row = 0;
    for (const ScheduledChunk& c : step.plan.chunks) {
      if (!c.sample) continue;
      Request& r = *c.request;
      const size_t k = row++;
      if (r.prompt_only || r.num_output_tokens() + 1 >= r.params.max_tokens ||
          r.num_tokens() + 1 >= token_limit)
        continue;
      step.token_slots[k] = r.num_tokens();
      r.tokens.push_back(-1);
      ++r.num_pending_tokens;
      r.pending_row = static_cast<int32_t>(k);
    }
  }

  // Waits for the launched step and applies its tokens.
  void collect_in_flight() {
    LaunchedStep step = std::move(*in_flight);
    in_flight.reset();
    std::vector<SampledToken> sampled;
    std::string step_failure;
    try {
      sampled = runner->collect(step.input);
      if (sampled.size() != step.token_slots.size())
        step_failure = "the runner returned " + std::to_string(sampled.size()) + " tokens for " +
                       std::to_string(step.token_slots.size()) + " sequences";
    } catch (const std::exception& e) {
      step_failure = e.what();
    }
    if (!step_failure.empty()) {
      fail_step(step, step_failure);
      return;
    }
    if (config.async_scheduling)  // counted computed at its launch
      scheduler->offer_computed_blocks(step.plan);
    else
      scheduler->update(step.plan);
    // Followers fork before the leader's first token is appended (which may finish it); from a
    // leader preempted since its launch (asynchronous scheduling), they prefill on their own.
    for (const ScheduledChunk& c : step.plan.chunks) {
      Request& r = *c.request;
      if (!c.sample || r.finished() || r.prompt_followers.empty()) continue;
      if (r.num_computed_tokens >= r.num_prompt_tokens)
        fork_followers(r);
      else
        release_followers(r);
    }
    size_t next = 0;
    for (const ScheduledChunk& c : step.plan.chunks) {
      if (!c.sample) continue;
      const size_t k = next++;
      Request& r = *c.request;
      if (r.finished()) continue;  // ended while the step ran (abort, a stop of the step before)
      if (r.prompt_only) {         // the prompt is computed: that was all it asked for
        finish(r, FinishReason::kLength);
        continue;
      }
      const int64_t id = r.id;
      try {
        append(r, step.token_slots[k], std::move(sampled[k]));
      } catch (const std::exception& e) {  // e.g. the grammar matcher: that request only
        const auto it = requests.find(id);
        if (it != requests.end()) finish(*it->second, FinishReason::kError, {}, e.what());
      }
    }
  }

  // The step's K/V writes are unknown: fail every request in it and free its blocks.
  void fail_step(const LaunchedStep& step, const std::string& step_failure) {
    check_device(step_failure);
    const std::string error = failure.empty() ? "model runner failed: " + step_failure : failure;
    for (const ScheduledChunk& c : step.plan.chunks)
      if (!c.request->finished()) finish(*c.request, FinishReason::kError, {}, error);
    if (!failure.empty()) fail_all();
  }

  // After a failed step: when the runner says its device can run nothing more, the engine
  // records why, fails every request (fail_all) and refuses new ones, instead of failing each
  // later step one by one while looking healthy.
  void check_device(const std::string& step_failure) {
    std::string fault;
    try {
      fault = runner->device_fault();
    } catch (const std::exception& e) {
      fault = e.what();
    }
    if (!fault.empty())
      failure = "the device is lost: " + fault + " (the failed step: " + step_failure + ")";
  }
  void fail_all() {
    std::vector<Request*> left;
    for (auto& [id, r] : requests) left.push_back(r.get());
    std::sort(left.begin(), left.end(),
              [](const Request* a, const Request* b) { return a->id < b->id; });
    for (Request* r : left) finish(*r, FinishReason::kError, {}, failure);
  }

  void abort(int64_t id) {
    const auto it = requests.find(id);
    if (it == requests.end()) return;
    finish(*it->second, FinishReason::kAbort);
    free_retired();
    deliver();
  }

  ~Impl() {
    // A step still running reads and writes the runner's memory: wait for it; its tokens go
    // nowhere.
    if (!in_flight) return;
    try {
      runner->collect(in_flight->input);
    } catch (const std::exception&) {
    }
  }
};

Engine::Engine(std::unique_ptr<ModelRunner> runner, const Tokenizer* tokenizer, EngineConfig config)
    : impl_(std::make_unique<Impl>(std::move(runner), tokenizer, config)) {}

Engine::~Engine() = default;

int64_t Engine::add_request(GenerationRequest request) {
  return impl_->add(std::move(request));
}

void Engine::abort(int64_t request_id) {
  impl_->abort(request_id);
}

bool Engine::has_unfinished() const {
  return !impl_->scheduler->empty();
}

const std::string& Engine::failure() const {
  return impl_->failure;
}

bool Engine::step() {
  return impl_->step();
}

void Engine::run_until_idle() {
  while (has_unfinished())
    if (!step()) throw Error("engine: requests are waiting but none can be scheduled");
}

EngineStats Engine::stats() const {
  EngineStats s = impl_->totals;
  s.running = impl_->scheduler->num_running();
  s.waiting = impl_->scheduler->num_waiting() + impl_->num_followers;
  s.kv_blocks_total = impl_->blocks->num_usable();
  s.kv_blocks_free = impl_->blocks->num_free();
  s.kv_blocks_cached = impl_->blocks->num_evictable();
  s.prefix_cache_queries = impl_->scheduler->prefix_cache_queries();
  s.prefix_cache_hits = impl_->scheduler->prefix_cache_hits();
  return s;
}

const EngineConfig& Engine::config() const {
  return impl_->config;
}

ModelRunner& Engine::runner() {
  return *impl_->runner;
}

const std::vector<int32_t>& Engine::eos_token_ids() const {
  return impl_->eos_ids;
}

}  // namespace l2kv
