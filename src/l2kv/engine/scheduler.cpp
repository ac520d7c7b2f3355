#include "l2kv/engine/scheduler.h"

#include <algorithm>
#include <optional>
#include <span>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

ScheduledChunk chunk_of(Request* r, int32_t n) {
  return {r, r->num_computed_tokens, n, r->num_computed_tokens + n == r->num_tokens()};
}

}  // namespace

Scheduler::Scheduler(SchedulerConfig config, BlockManager& blocks)
    : config_(config), blocks_(blocks) {
  if (config_.max_num_seqs < 1 || config_.max_num_batched_tokens < 1)
    throw Error("scheduler: max_num_seqs and max_num_batched_tokens must be at least 1");
}

void Scheduler::add(Request* request) {
  request->status = RequestStatus::kWaiting;
  waiting_.push_back(request);
}

void Scheduler::add_forked(Request* follower, const Request& leader) {
  if (blocks_.has_table(follower->id) || leader.num_computed_tokens < leader.num_prompt_tokens)
    throw Error("scheduler: request " + std::to_string(follower->id) + " cannot fork from " +
                std::to_string(leader.id));
  const int32_t shared = (leader.num_prompt_tokens - 1) / blocks_.block_size();
  std::vector<std::vector<int32_t>> tables;
  for (int32_t g = 0; g < blocks_.num_groups(); ++g) {
    const std::span<const int32_t> table =
        blocks_.block_table(leader.id, g).first(static_cast<size_t>(shared));
    tables.emplace_back(table.begin(), table.end());
  }
  blocks_.share(follower->id, tables);
  follower->num_computed_tokens = shared * blocks_.block_size();
  follower->num_cached_blocks = shared;  // the leader offered them to the cache already
  follower->status = RequestStatus::kWaiting;
  waiting_.push_front(follower);
}

bool Scheduler::release_waiting_blocks() {
  for (auto it = waiting_.rbegin(); it != waiting_.rend(); ++it) {
    Request* r = *it;
    if (!blocks_.has_table(r->id)) continue;
    blocks_.free(r->id);
    r->num_computed_tokens = 0;
    r->num_cached_blocks = 0;
    return true;
  }
  return false;
}

void Scheduler::remove(Request* request) {
  std::erase(running_, request);
  std::erase(waiting_, request);
  blocks_.free(request->id);
}

void Scheduler::preempt(Request* request) {
  std::erase(running_, request);
  blocks_.free(request->id);
  request->num_computed_tokens = 0;
  request->num_cached_blocks = 0;
  request->status = RequestStatus::kWaiting;
  ++request->num_preemptions;
  waiting_.push_front(request);
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  int32_t budget = config_.max_num_batched_tokens;

  // 1. Running requests, oldest first. A victim is always newer than every request scheduled
  // so far (those sit before `i`), so preemption never removes a planned chunk.
  for (size_t i = 0; i < running_.size() && budget > 0;) {
    Request* r = running_[i];
    const int32_t n = std::min(r->num_tokens() - r->num_computed_tokens, budget);
    if (n == 0) {  // waits for the token a launched step samples (asynchronous scheduling)
      ++i;
      continue;
    }
    // Blocks that left every window of the tokens to come go back to the pool first; while a
    // request has choices waiting (until the step that computes its prompt is collected, which
    // under asynchronous scheduling comes after the next plan), not those a choice forked at
    // its prompt's end resumes with (add_forked).
    int64_t keep_from = r->num_computed_tokens;
    if (!r->prompt_followers.empty())
      keep_from = std::min<int64_t>(
          keep_from, (r->num_prompt_tokens - 1) / blocks_.block_size() * blocks_.block_size());
    blocks_.free_outside_windows(r->id, keep_from);
    bool self_preempted = false;
    while (!blocks_.can_allocate(r->id, r->num_computed_tokens + n)) {
      if (release_waiting_blocks()) continue;
      Request* victim = running_.back();
      if (victim == r && running_.size() == 1)
        throw Error("scheduler: request " + std::to_string(r->id) + " needs more KV blocks for " +
                    std::to_string(r->num_computed_tokens + n) + " tokens than the pool's " +
                    std::to_string(blocks_.num_usable()));
      preempt(victim);
      plan.preempted.push_back(victim);
      if (victim == r) {
        self_preempted = true;
        break;
      }
    }
    if (self_preempted) break;  // r was the newest: nobody after it is left
    blocks_.allocate_for(r->id, r->num_computed_tokens + n);
    plan.chunks.push_back(chunk_of(r, n));
    plan.num_batched_tokens += n;
    budget -= n;
    ++i;
  }

  // 2. Waiting requests, in order, while nothing was preempted (admitting now would only
  // take the blocks the preempted request needs back).
  while (plan.preempted.empty() && !waiting_.empty() && budget > 0 &&
         static_cast<int32_t>(running_.size()) < config_.max_num_seqs) {
    Request* r = waiting_.front();
    // A waiting request holds no blocks and has computed nothing (new, or preempted), unless
    // it was forked from another (add_forked): then it starts on the blocks it holds.
    const bool forked = blocks_.has_table(r->id);
    const CachedPrefix prefix = forked ? CachedPrefix{} : cached_prefix(*r);
    const int32_t start =
        forked ? r->num_computed_tokens : prefix.num_blocks * blocks_.block_size();
    const int32_t n = std::min(r->num_tokens() - start, budget);
    if (forked) blocks_.free_outside_windows(r->id, start);
    if (!blocks_.can_allocate(r->id, start + n, prefix)) break;
    if (!prefix.empty()) blocks_.share(r->id, prefix.tables);
    blocks_.allocate_for(r->id, start + n);
    if (!forked) {
      r->num_computed_tokens = start;
      r->num_cached_blocks = prefix.num_blocks;
    }
    if (!forked && blocks_.caching_enabled()) {
      prefix_cache_queries_ += r->num_tokens();
      prefix_cache_hits_ += start;
    }
    waiting_.pop_front();
    r->status = RequestStatus::kRunning;
    running_.push_back(r);
    plan.chunks.push_back(chunk_of(r, n));
    plan.num_batched_tokens += n;
    budget -= n;
  }
  return plan;
}

void Scheduler::update(const StepPlan& plan, bool offer_to_cache) {
  for (const ScheduledChunk& chunk : plan.chunks) {
    Request& r = *chunk.request;
    r.num_computed_tokens += chunk.num_tokens;
    if (offer_to_cache && blocks_.caching_enabled())
      cache_computed_blocks(r, r.num_computed_tokens);
  }
}

void Scheduler::offer_computed_blocks(const StepPlan& plan) {
  if (!blocks_.caching_enabled()) return;
  for (const ScheduledChunk& chunk : plan.chunks) {
    Request& r = *chunk.request;
    // Finished or preempted since the launch: its blocks went back without their hashes.
    const int32_t end = chunk.start + chunk.num_tokens;
    if (r.status == RequestStatus::kRunning && r.num_computed_tokens >= end)
      cache_computed_blocks(r, end);
  }
}

int32_t Scheduler::hash_blocks(Request& r, int32_t num_blocks) {
  const auto bs = static_cast<size_t>(blocks_.block_size());
  const std::span<const int32_t> tokens(r.tokens);
  // A placeholder (asynchronous scheduling) is the last token or two: the blocks before it.
  const auto known = static_cast<size_t>(r.num_tokens() - r.num_pending_tokens);
  while (static_cast<int32_t>(r.block_hashes.size()) < num_blocks) {
    const size_t i = r.block_hashes.size();
    if ((i + 1) * bs > known) break;
    const std::optional<BlockHash> parent = i > 0 ? r.block_hashes[i - 1] : r.salt;
    r.block_hashes.push_back(hash_block(parent, 0, tokens.subspan(i * bs, bs)));
  }
  return std::min(num_blocks, static_cast<int32_t>(r.block_hashes.size()));
}

CachedPrefix Scheduler::cached_prefix(Request& r) {
  // Prompt logprobs need every prompt row computed.
  if (!blocks_.caching_enabled() || r.prompt_logprobs >= 0) return {};
  const int32_t most = hash_blocks(r, (r.num_tokens() - 1) / blocks_.block_size());
  return blocks_.find_cached_prefix(
      std::span<const BlockHash>(r.block_hashes).first(static_cast<size_t>(most)));
}

void Scheduler::cache_computed_blocks(Request& r, int32_t computed_tokens) {
  const int32_t computed = computed_tokens / blocks_.block_size();
  if (computed <= r.num_cached_blocks) return;
  const int32_t full = hash_blocks(r, computed);
  if (full <= r.num_cached_blocks) return;
  for (int32_t g = 0; g < blocks_.num_groups(); ++g) {
    const std::span<const int32_t> table = blocks_.block_table(r.id, g);
    for (int32_t i = r.num_cached_blocks; i < full; ++i)
      if (table[static_cast<size_t>(i)] != BlockManager::kNullBlock)
        blocks_.cache_block(table[static_cast<size_t>(i)], r.block_hashes[static_cast<size_t>(i)],
                            g);
  }
  r.num_cached_blocks = full;
}

}  // namespace l2kv
