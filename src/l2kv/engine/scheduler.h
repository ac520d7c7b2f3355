// The scheduler: queues and policy, nothing else. Each step is a map from running request to
// the number of its tokens to run now (vLLM V1's formulation): a prompt chunk, or 1 for a
// decode; a step may mix both. There are no prefill and decode modes.
//
// Policy, per step, within max_num_batched_tokens tokens and max_num_seqs sequences:
//  1. running requests first, oldest first: a decode token, or the next chunk of a prompt
//     still being prefilled. When one cannot get the block its tokens need, the NEWEST running
//     request is preempted by recomputation: all its blocks are freed, it goes to the front of
//     the waiting queue with num_computed_tokens = 0, keeps its output tokens and later
//     re-prefills prompt + output so far (a request may preempt itself this way).
//  2. then, unless step 1 preempted someone, waiting requests in order (FCFS), each admitted
//     only when the blocks of its first chunk are free; the head of the queue blocks the rest.
//     (A waiting request forked for n > 1 holds its shared prompt blocks; step 1 takes them
//     back, newest first, before it preempts a running request.)
//
// Prefix caching (when the BlockManager has it on): a request being admitted takes the longest
// run of cached blocks that hold its first tokens, whole blocks only and never its last token
// (one token is always computed, so there is a logit to sample), and its first chunk starts
// after them. A preempted request re-hits its own blocks this way, output tokens included,
// unless they were evicted meanwhile. After each step, every block a chunk filled is offered
// to the cache under its hash.
//
// Sliding windows (a BlockManager with windowed KV cache groups): before a running request's
// chunk is planned, the blocks of its windowed groups that no token to come can see go back to
// the pool, so a long conversation holds its windowed layers' window, not its whole length.
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "l2kv/engine/block_manager.h"
#include "l2kv/engine/request.h"

namespace l2kv {

struct SchedulerConfig {
  int32_t max_num_seqs = 256;
  int32_t max_num_batched_tokens = 2048;
};

// One request's part of a step: its tokens [start, start + num_tokens).
struct ScheduledChunk {
  Request* request = nullptr;
  int32_t start = 0;  // the request's num_computed_tokens when scheduled
  int32_t num_tokens = 0;
  bool sample = false;  // the chunk ends the request's known tokens: sample the next one
};

struct StepPlan {
  std::vector<ScheduledChunk> chunks;  // block tables already cover every chunk
  std::vector<Request*> preempted;     // in this step
  int32_t num_batched_tokens = 0;
  bool empty() const { return chunks.empty(); }
};

class Scheduler {
 public:
  // `blocks` must outlive the scheduler; the scheduler allocates and frees in it.
  Scheduler(SchedulerConfig config, BlockManager& blocks);

  // Queues a new request (status waiting) at the back of the waiting queue.
  void add(Request* request);
  // Takes a request out of whichever queue holds it and frees its blocks (finish, abort,
  // error). The request's status is left to the caller.
  void remove(Request* request);
  // n > 1: queues `follower` (same prompt as `leader`, which has just computed all of it) at
  // the front of the waiting queue, holding the leader's full blocks before the prompt's last
  // token; it computes the rest of its prompt itself when admitted.
  void add_forked(Request* follower, const Request& leader);

  StepPlan schedule();
  // After the step ran: each chunk's tokens are now cached; with `offer_to_cache`, the full
  // blocks they complete are offered to the prefix cache.
  void update(const StepPlan& plan, bool offer_to_cache = true);
  // Asynchronous scheduling: update(plan, false) when the step is launched (later plans count
  // its tokens computed), this once it has run: the blocks its chunks completed are offered to
  // the prefix cache, for requests still running (a failed step offers nothing).
  void offer_computed_blocks(const StepPlan& plan);

  int32_t num_waiting() const { return static_cast<int32_t>(waiting_.size()); }
  int32_t num_running() const { return static_cast<int32_t>(running_.size()); }
  bool empty() const { return waiting_.empty() && running_.empty(); }
  const std::deque<Request*>& waiting() const { return waiting_; }
  const std::vector<Request*>& running() const { return running_; }
  const SchedulerConfig& config() const { return config_; }
  // Prefix-cache lookups so far, in prompt tokens (vLLM's prefix_cache_queries), and the
  // tokens found cached (prefix_cache_hits); each admission counts, re-admissions included.
  int64_t prefix_cache_queries() const { return prefix_cache_queries_; }
  int64_t prefix_cache_hits() const { return prefix_cache_hits_; }

 private:
  void preempt(Request* request);
  // Frees the blocks of the newest waiting request that holds some (a forked one), which then
  // starts from nothing when admitted. False when no waiting request holds blocks.
  bool release_waiting_blocks();
  // Extends `r`'s block hashes to its first `num_blocks` full blocks, or those before a
  // placeholder token; returns how many of the first `num_blocks` are hashed.
  int32_t hash_blocks(Request& r, int32_t num_blocks);
  // The cached blocks a request being admitted may take (see above).
  CachedPrefix cached_prefix(Request& r);
  // Offers `r`'s full blocks among its first `computed_tokens` tokens to the cache.
  void cache_computed_blocks(Request& r, int32_t computed_tokens);

  SchedulerConfig config_;
  BlockManager& blocks_;
  std::deque<Request*> waiting_;
  std::vector<Request*> running_;  // in admission order: the newest at the back
  int64_t prefix_cache_queries_ = 0;
  int64_t prefix_cache_hits_ = 0;
};

}  // namespace l2kv
