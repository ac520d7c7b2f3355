// Scheduling policy: chunked prefill under the token budget, max_num_seqs, decodes before
// prompt chunks, preemption of the newest request, and (through a whole engine on a fake
// runner) rejection of prompts that could never run.
#include "l2kv/engine/scheduler.h"

#include <gtest/gtest.h>

#include <memory>
#include <set>

#include "l2kv/core/error.h"
#include "l2kv/engine/engine.h"

namespace l2kv {
namespace {

std::unique_ptr<Request> make_request(int64_t id, int32_t prompt_len) {
  SamplingParams params;
  params.temperature = 0;
  return std::make_unique<Request>(id, id, std::vector<int32_t>(prompt_len, 1), params, 0);
}

// Runs a plan as an engine would: tokens become cached, sampling chunks append a token.
void run(Scheduler& s, const StepPlan& plan) {
  s.update(plan);
  for (const ScheduledChunk& c : plan.chunks)
    if (c.sample) c.request->tokens.push_back(3);
}

int32_t tokens_of(const StepPlan& plan, const Request* r) {
  for (const ScheduledChunk& c : plan.chunks)
    if (c.request == r) return c.num_tokens;
  return 0;
}

TEST(Scheduler, ChunksPromptsUnderTheTokenBudget) {
  BlockManager blocks(64, 4);
  Scheduler s({.max_num_seqs = 8, .max_num_batched_tokens = 7}, blocks);
  auto a = make_request(0, 20);
  s.add(a.get());
  const std::vector<int32_t> expected{7, 7, 6, 1, 1};
  for (size_t i = 0; i < expected.size(); ++i) {
    const StepPlan plan = s.schedule();
    ASSERT_EQ(plan.chunks.size(), 1u);
    EXPECT_EQ(plan.chunks[0].num_tokens, expected[i]) << "step " << i;
    EXPECT_EQ(plan.chunks[0].sample, i >= 2) << "step " << i;
    EXPECT_GE(static_cast<int32_t>(blocks.block_table(0).size()) * 4,
              plan.chunks[0].start + plan.chunks[0].num_tokens);
    run(s, plan);
  }
  EXPECT_EQ(a->num_computed_tokens, 22);
  s.remove(a.get());
  EXPECT_EQ(blocks.num_free(), 63);
  EXPECT_TRUE(s.empty());
}

TEST(Scheduler, RespectsMaxNumSeqs) {
  BlockManager blocks(64, 4);
  Scheduler s({.max_num_seqs = 2, .max_num_batched_tokens = 100}, blocks);
  auto a = make_request(0, 3), b = make_request(1, 3), c = make_request(2, 3);
  for (Request* r : {a.get(), b.get(), c.get()}) s.add(r);
  StepPlan plan = s.schedule();
  EXPECT_EQ(plan.chunks.size(), 2u);
  EXPECT_EQ(s.num_running(), 2);
  EXPECT_EQ(s.num_waiting(), 1);
  EXPECT_EQ(tokens_of(plan, c.get()), 0);
  run(s, plan);
  s.remove(a.get());  // a finishes: c gets its place
  plan = s.schedule();
  EXPECT_EQ(tokens_of(plan, b.get()), 1);
  EXPECT_EQ(tokens_of(plan, c.get()), 3);
}

TEST(Scheduler, DecodesComeFirstThenPromptChunks) {
  BlockManager blocks(64, 4);
  Scheduler s({.max_num_seqs = 8, .max_num_batched_tokens = 8}, blocks);
  auto a = make_request(0, 4), b = make_request(1, 4);
  s.add(a.get());
  s.add(b.get());
  run(s, s.schedule());  // both prompts in one step
  auto c = make_request(2, 30);
  s.add(c.get());
  const StepPlan plan = s.schedule();
  ASSERT_EQ(plan.chunks.size(), 3u);
  EXPECT_EQ(plan.chunks[0].request, a.get());
  EXPECT_EQ(plan.chunks[1].request, b.get());
  EXPECT_EQ(plan.chunks[0].num_tokens, 1);
  EXPECT_EQ(plan.chunks[1].num_tokens, 1);
  EXPECT_EQ(plan.chunks[2].request, c.get());
  EXPECT_EQ(plan.chunks[2].num_tokens, 6);  // the budget's rest
  EXPECT_FALSE(plan.chunks[2].sample);
  EXPECT_EQ(plan.num_batched_tokens, 8);
}

TEST(Scheduler, AdmitsOnlyWhenBlocksAreFree) {
  BlockManager blocks(5, 4);  // 4 usable blocks
  Scheduler s({.max_num_seqs = 8, .max_num_batched_tokens = 100}, blocks);
  auto a = make_request(0, 12), b = make_request(1, 8);
  s.add(a.get());
  s.add(b.get());
  StepPlan plan = s.schedule();
  EXPECT_EQ(tokens_of(plan, a.get()), 12);
  EXPECT_EQ(tokens_of(plan, b.get()), 0);  // needs 2 blocks, 1 is free
  EXPECT_EQ(s.num_waiting(), 1);
  run(s, plan);
  s.remove(a.get());
  plan = s.schedule();
  EXPECT_EQ(tokens_of(plan, b.get()), 8);
}

TEST(Scheduler, PreemptsTheNewestRequest) {
  BlockManager blocks(4, 4);  // 3 usable blocks
  Scheduler s({.max_num_seqs = 8, .max_num_batched_tokens = 100}, blocks);
  auto a = make_request(0, 4), b = make_request(1, 3), c = make_request(2, 3);
  for (Request* r : {a.get(), b.get(), c.get()}) s.add(r);
  run(s, s.schedule());  // a: 4 + 1 tokens, b: 3 + 1, c: 3 + 1; one block each
  EXPECT_EQ(blocks.num_free(), 0);
  // a's 5th token needs a second block: c, the newest, is preempted, b keeps running.
  const StepPlan plan = s.schedule();
  ASSERT_EQ(plan.preempted.size(), 1u);
  EXPECT_EQ(plan.preempted[0], c.get());
  EXPECT_EQ(c->num_computed_tokens, 0);
  EXPECT_EQ(c->num_preemptions, 1);
  EXPECT_EQ(c->status, RequestStatus::kWaiting);
  EXPECT_EQ(c->num_tokens(), 4);  // keeps its output token
  EXPECT_FALSE(blocks.has_table(2));
  EXPECT_EQ(tokens_of(plan, a.get()), 1);
  EXPECT_EQ(tokens_of(plan, b.get()), 1);
  EXPECT_EQ(tokens_of(plan, c.get()), 0);  // nothing is admitted in a step that preempts
  EXPECT_EQ(s.waiting().front(), c.get());
  run(s, plan);
  // b needs a second block too and is now the newest running: it preempts itself.
  const StepPlan next = s.schedule();
  ASSERT_EQ(next.preempted.size(), 1u);
  EXPECT_EQ(next.preempted[0], b.get());
  EXPECT_EQ(tokens_of(next, a.get()), 1);
  EXPECT_EQ(s.waiting().front(), b.get());  // ahead of c: arrival order is kept
  EXPECT_EQ(s.waiting().back(), c.get());
  run(s, next);
  s.remove(a.get());
  // b re-prefills its prompt and output so far in one chunk.
  const StepPlan again = s.schedule();
  EXPECT_EQ(tokens_of(again, b.get()), 5);
  EXPECT_TRUE(again.chunks[0].sample);
}

// A model runner without a model: checks the tables it gets and samples token (last + 1).
class FakeRunner : public ModelRunner {
 public:
  FakeRunner() {
    config_.architecture = "LlamaForCausalLM";
    config_.vocab_size = 100;
    config_.max_position_embeddings = 64;
    config_.num_layers = 1;
  }
  const ModelConfig& config() const override { return config_; }
  std::string device_name() const override { return "fake"; }
  KvCacheSizing prepare(int32_t block_size, int32_t, int32_t, int32_t, double) override {
    block_size_ = block_size;
    return {1, 1000};
  }
  void allocate_kv_cache(int32_t num_blocks) override { num_blocks_ = num_blocks; }
  std::vector<SampledToken> execute(const StepInput& step) override {
    std::vector<SampledToken> out;
    // Prefix caching shares full blocks between tables; a block this step writes must be in
    // no other table, and no block appears twice in one table.
    std::multiset<int32_t> used;
    std::set<int32_t> written;
    for (const StepSequence& s : step.sequences) {
      const int64_t end = s.start_position + static_cast<int64_t>(s.tokens.size());
      EXPECT_GE(static_cast<int64_t>(s.block_tables[0].size()) * block_size_, end);
      std::set<int32_t> mine;
      for (int32_t b : s.block_tables[0]) {
        EXPECT_GT(b, 0);
        EXPECT_LT(b, num_blocks_);
        EXPECT_TRUE(mine.insert(b).second) << "block " << b << " twice in one table";
        used.insert(b);
      }
      for (int64_t i = s.start_position / block_size_; i * block_size_ < end; ++i)
        written.insert(s.block_tables[0][static_cast<size_t>(i)]);
      if (s.sample) out.push_back({(s.tokens.back() + 1) % 100, 0.f, {}});
    }
    for (int32_t b : written) EXPECT_EQ(used.count(b), 1u) << "block " << b << " written shared";
    return out;
  }

 private:
  ModelConfig config_;
  int32_t block_size_ = 0, num_blocks_ = 0;
};

TEST(SchedulerAdmission, RejectsPromptsThatCouldNeverRun) {
  // A pool smaller than one max_model_len request is refused at start (it would end requests
  // early, below the length the server advertises): the engine's own tests cover that.
  Engine engine(std::make_unique<FakeRunner>(), nullptr,
                {.block_size = 4, .max_num_seqs = 2, .max_model_len = 32, .num_kv_blocks = 9});
  GenerationRequest too_long;
  too_long.prompt.assign(33, 1);
  try {
    engine.add_request(too_long);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("33 tokens"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("max_model_len 32"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(engine.has_unfinished());
  // A prompt that fills the pool runs, and ends with "length" at max_model_len, the pool full.
  GenerationRequest fits;
  fits.prompt.assign(30, 1);
  fits.params.max_tokens = 100;
  fits.params.temperature = 0;
  RequestOutput last;
  int32_t produced = 0;
  fits.on_output = [&](const RequestOutput& o) {
    produced += static_cast<int32_t>(o.new_tokens.size());
    last = o;
  };
  engine.add_request(fits);
  engine.run_until_idle();
  EXPECT_TRUE(last.finished);
  EXPECT_EQ(last.finish_reason, FinishReason::kLength);
  EXPECT_EQ(produced, 2);  // 30 + 2 = 32 tokens: the whole pool
  EXPECT_EQ(engine.stats().kv_blocks_free, 8);
}

TEST(SchedulerAdmission, ManyRequestsOnASmallPoolAllFinishWithoutLeaks) {
  Engine engine(std::make_unique<FakeRunner>(), nullptr,
                {.block_size = 2,
                 .max_num_seqs = 5,
                 .max_num_batched_tokens = 9,
                 .max_model_len = 28,
                 .num_kv_blocks = 15});  // 14 usable blocks of 2: 28 tokens
  int finished = 0;
  for (int i = 0; i < 20; ++i) {
    GenerationRequest r;
    r.prompt.assign(static_cast<size_t>(1 + (i * 7) % 15), 5);
    r.params.temperature = 0;
    r.params.max_tokens = 1 + (i * 5) % 11;
    const int32_t want = r.params.max_tokens;
    r.on_output = [&finished, want](const RequestOutput& o) {
      if (!o.finished) return;
      ++finished;
      EXPECT_EQ(o.finish_reason, FinishReason::kLength);
      EXPECT_EQ(o.completion_tokens, want);
    };
    engine.add_request(r);
  }
  engine.run_until_idle();
  EXPECT_EQ(finished, 20);
  const EngineStats st = engine.stats();
  EXPECT_GT(st.preemptions, 0);
  EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total);
  EXPECT_EQ(st.running + st.waiting, 0);
}

}  // namespace
}  // namespace l2kv
