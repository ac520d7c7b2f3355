// The whole engine on the CPU backend over the tiny transformers fixtures: greedy tokens equal
// the fixtures' references whatever the batch, the chunk size or preemption; stop conditions;
// seeded sampling; aborts, invalid requests and a failing runner leak no KV block.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "l2kv/core/error.h"
#include "l2kv/engine/cpu_runner.h"
#include "l2kv/engine/engine.h"
#include "l2kv/engine/output_processor.h"
#include "l2kv/engine/stop_checker.h"
#include "l2kv/parallel/local_communicator.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(L2KV_TEST_SOURCE_DIR) / "model" / "fixtures";

struct Case {
  std::vector<int32_t> prompt, greedy;
};

struct Fixture {
  std::shared_ptr<const CpuModel> model;
  std::vector<Case> cases;
};

const Fixture& fixture(const std::string& name) {
  static std::map<std::string, Fixture> loaded;
  auto it = loaded.find(name);
  if (it != loaded.end()) return it->second;
  Fixture f;
  f.model = std::make_shared<const CpuModel>(kFixtures / name);
  std::ifstream in(kFixtures / name / "reference.json");
  const auto reference = nlohmann::json::parse(in);
  for (const auto& c : reference["cases"])
    f.cases.push_back(
        {c["prompt"].get<std::vector<int32_t>>(), c["greedy"].get<std::vector<int32_t>>()});
  return loaded.emplace(name, std::move(f)).first->second;
}

// Everything a request streamed, put together.
struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<SampledToken> logprobs;
  std::vector<PromptLogprob> prompt_logprobs;
  int outputs_with_prompt_logprobs = 0;
  int callbacks = 0;
  bool finished = false;
  RequestOutput last;
};

GenerationRequest request_for(std::vector<int32_t> prompt, SamplingParams params, Collected& into) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.params = std::move(params);
  r.on_output = [&into](const RequestOutput& o) {
    EXPECT_FALSE(into.finished) << "output after the final one";
    into.tokens.insert(into.tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
    into.text += o.new_text;
    into.logprobs.insert(into.logprobs.end(), o.new_logprobs.begin(), o.new_logprobs.end());
    if (!o.prompt_logprobs.empty()) {
      into.prompt_logprobs = o.prompt_logprobs;
      ++into.outputs_with_prompt_logprobs;
    }
    EXPECT_EQ(o.completion_tokens, static_cast<int32_t>(into.tokens.size()));
    ++into.callbacks;
    into.finished = o.finished;
    into.last = o;
  };
  return r;
}

SamplingParams greedy_params(int32_t max_tokens = 32) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = max_tokens;
  p.ignore_eos = true;  // the references do not stop at EOS
  return p;
}

// Pools here are sized in 16-token blocks (the tests' block counts and token sums say so); tests
// built on EngineConfig{} run at the default block size.
EngineConfig small_config() {
  EngineConfig c;
  c.block_size = 16;
  c.max_model_len = 256;
  c.num_kv_blocks = 64;
  c.max_num_seqs = 8;
  return c;
}

// `c` with steps synchronous (async false) or planned while the step before runs.
EngineConfig scheduled(EngineConfig c, bool async) {
  c.async_scheduling = async;
  return c;
}

constexpr bool kBothSchedulings[] = {false, true};

const char* scheduling_name(bool async) {
  return async ? "asynchronous scheduling" : "synchronous scheduling";
}

void expect_no_leak(const Engine& engine) {
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.kv_blocks_free, s.kv_blocks_total);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_FALSE(engine.has_unfinished());
}

// Runs every reference case of `name` at once and checks the tokens against transformers.
EngineStats run_references(const std::string& name, EngineConfig config) {
  const Fixture& f = fixture(name);
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, config);
  std::vector<Collected> got(f.cases.size());
  for (size_t i = 0; i < f.cases.size(); ++i)
    engine.add_request(request_for(f.cases[i].prompt, greedy_params(), got[i]));
  engine.run_until_idle();
  for (size_t i = 0; i < f.cases.size(); ++i) {
    EXPECT_EQ(got[i].tokens, f.cases[i].greedy) << name << " case " << i;
    EXPECT_TRUE(got[i].finished);
    EXPECT_EQ(got[i].last.finish_reason, FinishReason::kLength);
    EXPECT_EQ(got[i].last.prompt_tokens, static_cast<int32_t>(f.cases[i].prompt.size()));
  }
  expect_no_leak(engine);
  return engine.stats();
}

// A fixture's name, and whether steps are scheduled asynchronously.
class EngineFixture : public ::testing::TestWithParam<std::tuple<std::string, bool>> {
 protected:
  const std::string& name() const { return std::get<0>(GetParam()); }
  EngineConfig config(EngineConfig base) const {
    return scheduled(std::move(base), std::get<1>(GetParam()));
  }
  EngineStats run(EngineConfig base) const { return run_references(name(), config(base)); }
};

TEST_P(EngineFixture, ConcurrentGreedyMatchesTransformers) {
  const EngineStats s = run(small_config());
  EXPECT_EQ(s.generation_tokens, 3 * 32);
  EXPECT_EQ(s.preemptions, 0);
}

TEST_P(EngineFixture, ChunkedPrefillGivesTheSameTokens) {
  EngineConfig c = small_config();
  c.max_num_batched_tokens = 7;
  c.max_num_seqs = 4;
  c.block_size = 5;
  run(c);
}

TEST_P(EngineFixture, OneSequenceAtATimeGivesTheSameTokens) {
  EngineConfig c = small_config();
  c.max_num_seqs = 1;
  run(c);
}

TEST_P(EngineFixture, PreemptionGivesTheSameTokens) {
  // The three requests need 10 + 13 + 46 blocks of 4 tokens at their ends; 46 usable blocks
  // (max_model_len at most what they hold) force preemptions by recomputation. Gemma's two
  // KV cache groups hold 20 + 26 + 67 (its windowed group keeps the window before a 64-token
  // chunk and the chunk), so 67 usable blocks do the same.
  EngineConfig c = small_config();
  c.block_size = 4;
  c.num_kv_blocks = name() == "gemma3-sliding" ? 68 : 47;
  c.max_model_len = 46 * 4;
  c.max_num_batched_tokens = 64;
  const EngineStats s = run(c);
  EXPECT_GT(s.preemptions, 0);
  // The prompts share no whole block, so every hit is a preempted request re-taking blocks it
  // computed before its preemption (those not evicted meanwhile).
  EXPECT_GT(s.prefix_cache_hits, 0);
}

TEST_P(EngineFixture, GreedyWithoutPrefixCachingMatchesTransformers) {
  EngineConfig c = small_config();
  c.enable_prefix_caching = false;
  const EngineStats s = run(c);
  EXPECT_EQ(s.prefix_cache_queries, 0);
  EXPECT_EQ(s.prefix_cache_hits, 0);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, EngineFixture,
                         ::testing::Combine(::testing::Values("llama2-mha", "llama3-gqa",
                                                              "qwen2-tied", "gemma3-sliding"),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<EngineFixture::ParamType>& param) {
                           std::string name = std::get<0>(param.param);
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name + (std::get<1>(param.param) ? "_async" : "_sync");
                         });

// The engine over a tensor-parallel CpuRunner (the model split over 2 and 4 threads, 4 keeping
// each KV head on two ranks): transformers' tokens for every case, through chunked prefill ending
// mid-block and preemption, and every block back at the end; a split the model does not have is
// refused before anything loads.
TEST(EngineTensorParallel, ShardedRunnerGivesTransformersTokensThroughPreemption) {
  for (const std::string name : {"llama3-gqa", "qwen2-tied"})
    for (const int32_t ranks : {2, 4}) {
      SCOPED_TRACE(name + " over " + std::to_string(ranks) + " ranks");
      const Fixture& f = fixture(name);
      EngineConfig c = small_config();
      c.block_size = 4;
      c.num_kv_blocks = 47;
      c.max_model_len = 46 * 4;
      c.max_num_batched_tokens = 13;
      auto runner = std::make_unique<CpuRunner>(kFixtures / name, ranks);
      EXPECT_EQ(runner->tensor_parallel_size(), ranks);
      Engine engine(std::move(runner), nullptr, c);
      std::vector<Collected> got(f.cases.size());
      for (size_t i = 0; i < f.cases.size(); ++i)
        engine.add_request(request_for(f.cases[i].prompt, greedy_params(), got[i]));
      engine.run_until_idle();
      for (size_t i = 0; i < f.cases.size(); ++i)
        EXPECT_EQ(got[i].tokens, f.cases[i].greedy) << "case " << i;
      EXPECT_GT(engine.stats().preemptions, 0);
      expect_no_leak(engine);
    }
  EXPECT_THROW(CpuRunner(kFixtures / "llama3-gqa", 3), Error) << "4 heads over 3 ranks";
}

// A split model whose checkpoint cannot load ends the runner's construction with the
// checkpoint's error; a rank's model handed to a runner alone (whose forwards would wait for
// ranks that do not exist) is refused.
TEST(EngineTensorParallel, LoadFailuresAndLoneRanksAreRefused) {
  const fs::path dir = fs::path(::testing::TempDir()) / "l2kv_tp_no_weights";
  fs::create_directories(dir);
  fs::copy_file(kFixtures / "llama3-gqa" / "config.json", dir / "config.json",
                fs::copy_options::overwrite_existing);
  try {
    CpuRunner runner(dir, 2);
    ADD_FAILURE() << "a checkpoint without weights loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("safetensors"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
  LocalCommunicator comm(std::make_shared<LocalGroup>(2), 0);
  auto rank0 = std::make_shared<const CpuModel>(kFixtures / "llama3-gqa", comm);
  EXPECT_THROW(CpuRunner{rank0}, Error);
}

// head_dim 128 (the benchmarked models' head size) and an 1100-token prompt, prefilled in
// chunks of 256 tokens beside the other requests' decode steps.
TEST(Engine, HeadDim128AndALongChunkedPromptMatchTransformers) {
  EngineConfig c;
  c.max_model_len = 2048;
  c.num_kv_blocks = 200;
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 256;
  const EngineStats s = run_references("llama3-hd128", c);
  EXPECT_EQ(s.generation_tokens, 4 * 32);
}

TEST(Engine, MatchesCpuModelGreedyOnNewPrompts) {
  const Fixture& f = fixture("llama3-gqa");
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, small_config());
  std::vector<std::vector<int32_t>> prompts;
  for (int n : {1, 16, 33}) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back((i * 97 + n) % 512);
    prompts.push_back(p);
  }
  std::vector<Collected> got(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    engine.add_request(request_for(prompts[i], greedy_params(20), got[i]));
  engine.run_until_idle();
  for (size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(got[i].tokens, f.model->greedy(prompts[i], 20)) << i;
  expect_no_leak(engine);
}

TEST(Engine, AbortFreesBlocksAtOnce) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama2-mha");
    Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, scheduled(small_config(), async));
    std::vector<Collected> got(3);
    std::vector<int64_t> ids;
    for (size_t i = 0; i < 3; ++i)
      ids.push_back(engine.add_request(request_for(f.cases[i].prompt, greedy_params(), got[i])));
    Collected waiting;
    const int64_t never_run = engine.add_request(request_for({5, 6}, greedy_params(), waiting));
    engine.abort(never_run);  // still waiting: never scheduled
    EXPECT_TRUE(waiting.finished);
    EXPECT_EQ(waiting.last.finish_reason, FinishReason::kAbort);
    EXPECT_TRUE(waiting.tokens.empty());
    for (int i = 0; i < 5; ++i) engine.step();
    const int32_t free_before = engine.stats().kv_blocks_free;
    engine.abort(ids[2]);  // the 150-token prompt: 10 blocks of 16 back at once
    EXPECT_TRUE(got[2].finished);
    EXPECT_EQ(got[2].last.finish_reason, FinishReason::kAbort);
    EXPECT_EQ(engine.stats().kv_blocks_free, free_before + 10);
    EXPECT_EQ(engine.stats().running, 2);
    engine.abort(ids[2]);  // finished: ignored
    engine.abort(12345);   // unknown: ignored
    engine.run_until_idle();
    EXPECT_EQ(got[0].tokens, f.cases[0].greedy);
    EXPECT_EQ(got[1].tokens, f.cases[1].greedy);
    EXPECT_LT(got[2].tokens.size(), 32u);
    expect_no_leak(engine);
  }
}

TEST(Engine, AbortFromACallback) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama2-mha");
    Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, scheduled(small_config(), async));
    Collected a, b;
    int64_t id_b = -1;
    GenerationRequest ra = request_for(f.cases[0].prompt, greedy_params(), a);
    auto inner = ra.on_output;
    ra.on_output = [&, inner](const RequestOutput& o) {
      inner(o);
      if (a.tokens.size() == 3) engine.abort(id_b);  // a client hanging up mid-stream
    };
    engine.add_request(std::move(ra));
    id_b = engine.add_request(request_for(f.cases[1].prompt, greedy_params(), b));
    engine.run_until_idle();
    EXPECT_EQ(a.tokens, f.cases[0].greedy);
    EXPECT_EQ(b.last.finish_reason, FinishReason::kAbort);
    EXPECT_EQ(b.tokens.size(), 3u);
    expect_no_leak(engine);
  }
}

// Prefix caching. Each test runs the same requests with caching on and off (and against the
// model's own greedy decode): the tokens must be identical, and the hits exactly those the
// cache can hold.
struct Wave {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<SamplingParams> params;
};

struct WaveResult {
  std::vector<std::vector<Collected>> got;  // per wave, per request
  std::vector<EngineStats> stats;           // after each wave
};

// Runs each wave to completion on one engine, one after the other.
WaveResult run_waves(const std::vector<Wave>& waves, EngineConfig config) {
  const Fixture& f = fixture("llama3-gqa");
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, config);
  WaveResult out;
  out.got.reserve(waves.size());
  for (const Wave& w : waves) {
    out.got.emplace_back(w.prompts.size());
    for (size_t i = 0; i < w.prompts.size(); ++i)
      engine.add_request(request_for(w.prompts[i], w.params[i], out.got.back()[i]));
    engine.run_until_idle();
    out.stats.push_back(engine.stats());
  }
  expect_no_leak(engine);
  return out;
}

EngineConfig caching_config(bool on) {
  EngineConfig c;
  c.block_size = 4;
  c.max_model_len = 256;
  c.num_kv_blocks = 400;
  c.max_num_seqs = 8;
  c.enable_prefix_caching = on;
  return c;
}

// Greedy tokens with caching on equal caching off and the model's greedy decode.
void expect_same_tokens(const std::vector<Wave>& waves, const WaveResult& on, const WaveResult& off,
                        bool check_greedy) {
  const Fixture& f = fixture("llama3-gqa");
  for (size_t w = 0; w < waves.size(); ++w)
    for (size_t i = 0; i < waves[w].prompts.size(); ++i) {
      EXPECT_EQ(on.got[w][i].tokens, off.got[w][i].tokens) << "wave " << w << " request " << i;
      EXPECT_FALSE(on.got[w][i].tokens.empty());
      if (check_greedy) {
        EXPECT_EQ(on.got[w][i].tokens,
                  f.model->greedy(waves[w].prompts[i], waves[w].params[i].max_tokens))
            << "wave " << w << " request " << i;
      }
    }
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(EnginePrefixCache, WholeAndPartialPrefixHitsGiveTheSameTokens) {
  const std::vector<int32_t>& p = fixture("llama3-gqa").cases[2].prompt;  // 150 tokens
  const std::vector<int32_t> first = fixture("llama3-gqa").model->greedy(p, 16);
  const std::vector<int32_t> head(p.begin(), p.begin() + 70);
  const std::vector<Wave> waves = {
      {{p}, {greedy_params(16)}},
      {{
           p,                                           // whole prompt: 37 blocks, not the last
           concat(head, {1, 2, 3}),                     // 17 blocks of the prompt
           concat(concat(p, first), {5, 6, 7}),         // a second turn: prompt and output blocks
           concat({p[0], p[1], p[2]}, {9, 9, 9, 9, 9})  // less than a block in common
       },
       std::vector<SamplingParams>(4, greedy_params(16))}};
  const WaveResult on = run_waves(waves, caching_config(true));
  const WaveResult off = run_waves(waves, caching_config(false));
  expect_same_tokens(waves, on, off, true);

  EXPECT_EQ(on.stats[0].prefix_cache_queries, 150);
  EXPECT_EQ(on.stats[0].prefix_cache_hits, 0);
  // The first request computed 150 + 15 tokens (its last sampled one never runs): 41 full
  // blocks. Hits: 37 blocks (149 tokens may hit), 17 blocks, 41 blocks, none.
  EXPECT_EQ(on.stats[1].prefix_cache_queries, 150 + 150 + 73 + 169 + 8);
  EXPECT_EQ(on.stats[1].prefix_cache_hits, 4 * (37 + 17 + 41));
  EXPECT_EQ(on.stats[1].prompt_tokens, off.stats[1].prompt_tokens - 4 * (37 + 17 + 41));
  EXPECT_EQ(on.stats[1].generation_tokens, off.stats[1].generation_tokens);
  EXPECT_GT(on.stats[1].kv_blocks_cached, 0);
}

TEST(EnginePrefixCache, HitsAfterEvictionPressureKeepTheTokensRight) {
  // 59 usable blocks of 4. The first request leaves 39 cached blocks (157 computed tokens) and
  // one free; the second (108 tokens, 27 blocks) takes the 20 free blocks, then evicts 7 from
  // the LRU: the first request's last 7 cached blocks (a table goes back tail first). So the
  // prompt sent again hits its first 32 blocks only.
  const std::vector<int32_t>& p = fixture("llama3-gqa").cases[2].prompt;
  std::vector<int32_t> other;
  for (int i = 0; i < 100; ++i) other.push_back(500 - (i * 37) % 400);
  const std::vector<Wave> waves = {
      {{p}, {greedy_params(8)}}, {{other}, {greedy_params(8)}}, {{p}, {greedy_params(8)}}};
  EngineConfig on_config = caching_config(true), off_config = caching_config(false);
  on_config.num_kv_blocks = off_config.num_kv_blocks = 60;
  on_config.max_model_len = off_config.max_model_len = 236;
  const WaveResult on = run_waves(waves, on_config);
  const WaveResult off = run_waves(waves, off_config);
  expect_same_tokens(waves, on, off, true);
  EXPECT_EQ(on.stats[1].prefix_cache_hits, 0);
  EXPECT_EQ(on.stats[1].kv_blocks_cached, 39 - 7 + 26);  // the second's 107 computed tokens
  EXPECT_EQ(on.stats[2].prefix_cache_hits, 4 * 32);
}

TEST(EnginePrefixCache, HitsAcrossSamplingParametersKeepSeededSamplingReproducible) {
  const std::vector<int32_t>& p = fixture("llama3-gqa").cases[2].prompt;
  SamplingParams sampled;
  sampled.temperature = 0.9;
  sampled.top_k = 40;
  sampled.top_p = 0.95;
  sampled.seed = 7;
  sampled.max_tokens = 12;
  sampled.ignore_eos = true;
  SamplingParams penalized = greedy_params(12);
  penalized.repetition_penalty = 1.3;
  penalized.presence_penalty = 0.5;
  const std::vector<Wave> waves = {
      {{p}, {greedy_params(12)}},
      {{p, concat(p, {3, 4}), p}, {sampled, sampled, penalized}},
  };
  const WaveResult on = run_waves(waves, caching_config(true));
  const WaveResult off = run_waves(waves, caching_config(false));
  expect_same_tokens(waves, on, off, false);
  EXPECT_EQ(on.stats[1].prefix_cache_hits, 4 * (37 + 37 + 37));  // 149 and 151 tokens may hit
}

// vLLM's cache_salt: a request finds only blocks that requests of its own salt cached (none of
// another salt's, nor of unsalted requests, nor they of its), and its tokens stay the same.
TEST(EnginePrefixCache, CacheSaltKeepsPrefixesApart) {
  const Fixture& f = fixture("llama3-gqa");
  const std::vector<int32_t>& p = f.cases[2].prompt;  // 150 tokens: 37 blocks may hit
  const std::vector<int32_t> want = f.model->greedy(p, 8);
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, caching_config(true));
  int64_t hits_before = 0;
  // Runs `p` under `salt`; returns the tokens it found cached.
  const auto hits = [&](const std::string& salt) {
    Collected c;
    GenerationRequest r = request_for(p, greedy_params(8), c);
    r.cache_salt = salt;
    engine.add_request(std::move(r));
    engine.run_until_idle();
    EXPECT_EQ(c.tokens, want) << "salt \"" << salt << "\"";
    return engine.stats().prefix_cache_hits -
           std::exchange(hits_before, engine.stats().prefix_cache_hits);
  };
  EXPECT_EQ(hits("a"), 0);
  EXPECT_EQ(hits("b"), 0);
  EXPECT_EQ(hits(""), 0);
  EXPECT_EQ(hits("a"), 4 * 37);
  EXPECT_EQ(hits("b"), 4 * 37);
  EXPECT_EQ(hits(""), 4 * 37);
  expect_no_leak(engine);
}

// Random mixes (fixed seed) on a small pool: prompts that share prefixes, arrivals between
// steps, aborts, preemption and eviction. Every request that finishes has the model's greedy
// tokens, an aborted one a prefix of them, and at the end every block is free.
TEST(EnginePrefixCache, RandomMixesKeepTokensAndLeakNothing) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama3-gqa");
    std::mt19937 rng(18);
    std::vector<std::vector<int32_t>> bases(3);
    for (auto& b : bases)
      for (int i = 0; i < 48; ++i) b.push_back(static_cast<int32_t>(3 + rng() % 500));
    EngineConfig c;
    c.async_scheduling = async;
    c.block_size = 4;
    c.num_kv_blocks = 41;  // 160 tokens: a few requests at once, then preemption and eviction
    c.max_model_len = 160;
    c.max_num_seqs = 6;
    c.max_num_batched_tokens = 24;
    Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
    struct Sent {
      std::vector<int32_t> prompt;
      int32_t max_tokens = 0;
      int64_t id = 0;
      Collected got;
    };
    std::vector<std::unique_ptr<Sent>> sent;
    int aborted = 0;
    for (int round = 0; round < 40 || engine.has_unfinished(); ++round) {
      for (uint32_t arrivals = round < 40 ? rng() % 3 : 0; arrivals > 0; --arrivals) {
        auto s = std::make_unique<Sent>();
        const auto& base = bases[rng() % bases.size()];
        s->prompt.assign(base.begin(), base.begin() + 1 + static_cast<std::ptrdiff_t>(rng() % 48));
        for (uint32_t i = 0, n = rng() % 6; i < n; ++i)
          s->prompt.push_back(static_cast<int32_t>(3 + rng() % 500));
        s->max_tokens = 2 + static_cast<int32_t>(rng() % 30);
        s->id = engine.add_request(request_for(s->prompt, greedy_params(s->max_tokens), s->got));
        // Now and then n > 1: more choices of the same prompt sharing its prefill.
        const int64_t leader = s->id;
        const std::vector<int32_t> prompt = s->prompt;
        sent.push_back(std::move(s));
        for (uint32_t more = rng() % 4 == 0 ? 1 + rng() % 3 : 0; more > 0; --more) {
          auto choice = std::make_unique<Sent>();
          choice->prompt = prompt;
          choice->max_tokens = 2 + static_cast<int32_t>(rng() % 30);
          GenerationRequest g =
              request_for(choice->prompt, greedy_params(choice->max_tokens), choice->got);
          g.share_prompt_with = leader;
          choice->id = engine.add_request(std::move(g));
          sent.push_back(std::move(choice));
        }
      }
      if (!sent.empty() && rng() % 9 == 0) {
        Sent& victim = *sent[rng() % sent.size()];
        if (!victim.got.finished) {
          engine.abort(victim.id);
          ++aborted;
        }
      }
      engine.step();
    }
    const EngineStats st = engine.stats();
    EXPECT_GT(aborted, 0);
    EXPECT_GT(st.preemptions, 0);
    EXPECT_GT(st.prefix_cache_hits, 0);
    for (const auto& s : sent) {
      ASSERT_TRUE(s->got.finished);
      const std::vector<int32_t> ref = f.model->greedy(s->prompt, s->max_tokens);
      if (s->got.last.finish_reason == FinishReason::kAbort) {
        ASSERT_LE(s->got.tokens.size(), ref.size());
        EXPECT_TRUE(std::equal(s->got.tokens.begin(), s->got.tokens.end(), ref.begin()));
      } else {
        EXPECT_EQ(s->got.last.finish_reason, FinishReason::kLength);
        EXPECT_EQ(s->got.tokens, ref) << "request " << s->id;
      }
    }
    expect_no_leak(engine);
  }
}

// n > 1 with one prefill (GenerationRequest::share_prompt_with).
struct GroupRun {
  std::vector<Collected> got;
  EngineStats stats;
  int32_t peak_blocks_used = 0;
};

// Runs one prompt as a group of `params.size()` choices (shared prefill, or not), to the end.
GroupRun run_group(const std::vector<int32_t>& prompt, const std::vector<SamplingParams>& params,
                   EngineConfig config, bool share) {
  const Fixture& f = fixture("llama3-gqa");
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, config);
  GroupRun out;
  out.got.resize(params.size());
  int64_t leader = -1;
  for (size_t i = 0; i < params.size(); ++i) {
    GenerationRequest r = request_for(prompt, params[i], out.got[i]);
    if (share) r.share_prompt_with = leader;
    const int64_t id = engine.add_request(std::move(r));
    if (i == 0) leader = id;
  }
  while (engine.has_unfinished()) {
    engine.step();
    const EngineStats st = engine.stats();
    out.peak_blocks_used = std::max(out.peak_blocks_used, st.kv_blocks_total - st.kv_blocks_free);
  }
  out.stats = engine.stats();
  expect_no_leak(engine);
  return out;
}

TEST(EngineParallelSampling, ChoicesShareOnePrefillAndKeepTheirTokens) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama3-gqa");
    const std::vector<int32_t>& p = f.cases[2].prompt;  // 150 tokens: 37 full blocks of 4 + 2
    SamplingParams sampled;
    sampled.temperature = 1.0;
    sampled.max_tokens = 16;
    sampled.ignore_eos = true;
    std::vector<SamplingParams> params = {greedy_params(16), sampled, sampled, greedy_params(16)};
    params[1].seed = 11;
    params[2].seed = 12;
    for (bool caching : {false, true}) {
      const EngineConfig c = scheduled(caching_config(caching), async);
      const GroupRun shared = run_group(p, params, c, true);
      const GroupRun alone = run_group(p, params, c, false);
      for (size_t i = 0; i < params.size(); ++i)
        EXPECT_EQ(shared.got[i].tokens, alone.got[i].tokens) << "choice " << i;
      EXPECT_EQ(shared.got[0].tokens, f.model->greedy(p, 16));
      EXPECT_EQ(shared.got[3].tokens, shared.got[0].tokens);
      EXPECT_NE(shared.got[1].tokens, shared.got[2].tokens);  // their own seeds
      // One prefill: each other choice computes only the 2 tokens after the 37 shared blocks.
      EXPECT_EQ(shared.stats.prompt_tokens, 150 + 3 * 2) << "caching " << caching;
      EXPECT_EQ(shared.stats.prefix_cache_queries, caching ? 150 : 0);
      // Seen between steps, a choice holds at most 41 blocks (164 tokens), 37 of them shared;
      // one more under asynchronous scheduling, whose next step (the 165th token) then runs.
      const int32_t held = async ? 42 : 41;
      EXPECT_LE(shared.peak_blocks_used, 37 + 4 * (held - 37));
      if (!caching) {
        EXPECT_EQ(alone.peak_blocks_used, 4 * held);
      }
    }
  }
}

// The KV blocks of n = 4 against n = 1 at the shape "Automatic prefix caching" asks about (a
// 1,024-token prompt and 64 output tokens, blocks of 16; here 960 + 64, the fixture's whole
// context): the choices share the prompt's blocks but for the last, which each other choice
// holds a copy of (it computes the prompt's last token again: those logits start its sampling),
// so n = 4 holds 60 + 4 x 4 + 3 blocks at its peak against 64 (1.23x; the issue allows 1.3x).
// Block counts are the engine's, not a backend's.
TEST(EngineParallelSampling, FourChoicesHoldAtMostOnePointThreeTimesTheBlocksOfOne) {
  std::vector<int32_t> prompt(960);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 37 + 5) % 500);
  SamplingParams sampled;
  sampled.temperature = 1.0;
  sampled.max_tokens = 64;
  sampled.ignore_eos = true;
  std::vector<SamplingParams> four(4, sampled);
  for (size_t i = 0; i < four.size(); ++i) four[i].seed = static_cast<uint64_t>(21 + i);
  EngineConfig c;
  c.block_size = 16;
  c.max_model_len = 1024;
  c.num_kv_blocks = 400;
  c.max_num_seqs = 8;
  const GroupRun one = run_group(prompt, {four[0]}, c, true);
  const GroupRun group = run_group(prompt, four, c, true);
  std::printf("KV blocks at peak: n = 1 %d, n = 4 %d (%.2fx)\n", one.peak_blocks_used,
              group.peak_blocks_used,
              static_cast<double>(group.peak_blocks_used) / one.peak_blocks_used);
  EXPECT_EQ(one.peak_blocks_used, 64);
  EXPECT_EQ(group.peak_blocks_used, 60 + 4 * 4 + 3);
  EXPECT_LE(group.peak_blocks_used * 10, one.peak_blocks_used * 13);
  for (const Collected& choice : group.got) EXPECT_EQ(choice.tokens.size(), 64u);
}

TEST(EngineParallelSampling, LeaderEndingEarlyLeavesItsChoicesRight) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama3-gqa");
    const std::vector<int32_t>& p = f.cases[2].prompt;
    const std::vector<int32_t> ref = f.model->greedy(p, 12);
    EngineConfig c = scheduled(caching_config(false), async);
    c.max_num_batched_tokens = 40;  // the 150-token prompt takes 4 steps
    {
      // The leader finishes at the step that computes the prompt (max_tokens 1): its choices
      // already hold the shared blocks.
      Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
      std::vector<Collected> got(3);
      const int64_t leader = engine.add_request(request_for(p, greedy_params(1), got[0]));
      for (size_t i = 1; i < 3; ++i) {
        GenerationRequest r = request_for(p, greedy_params(12), got[i]);
        r.share_prompt_with = leader;
        engine.add_request(std::move(r));
      }
      EXPECT_EQ(engine.stats().waiting, 3);
      engine.run_until_idle();
      EXPECT_EQ(got[0].tokens, std::vector<int32_t>{ref[0]});
      EXPECT_EQ(got[1].tokens, ref);
      EXPECT_EQ(got[2].tokens, ref);
      EXPECT_EQ(engine.stats().prompt_tokens, 150 + 2 * 2);
      expect_no_leak(engine);
    }
    {
      // The leader is aborted mid-prefill and a choice while it waits: the other choice runs on
      // its own.
      Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
      std::vector<Collected> got(3);
      std::vector<int64_t> ids;
      ids.push_back(engine.add_request(request_for(p, greedy_params(12), got[0])));
      for (size_t i = 1; i < 3; ++i) {
        GenerationRequest r = request_for(p, greedy_params(12), got[i]);
        r.share_prompt_with = ids[0];
        ids.push_back(engine.add_request(std::move(r)));
      }
      engine.step();
      engine.abort(ids[2]);
      engine.abort(ids[0]);
      EXPECT_EQ(got[0].last.finish_reason, FinishReason::kAbort);
      EXPECT_EQ(got[2].last.finish_reason, FinishReason::kAbort);
      EXPECT_TRUE(got[2].tokens.empty());
      engine.run_until_idle();
      EXPECT_EQ(got[1].tokens, ref);
      expect_no_leak(engine);
    }
    {
      // A request that does not qualify as a leader (another prompt, unknown id) is ignored.
      Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
      std::vector<Collected> got(3);
      const int64_t other =
          engine.add_request(request_for(f.cases[1].prompt, greedy_params(4), got[0]));
      GenerationRequest r = request_for(p, greedy_params(12), got[1]);
      r.share_prompt_with = other;
      engine.add_request(std::move(r));
      r = request_for(p, greedy_params(12), got[2]);
      r.share_prompt_with = 999;
      engine.add_request(std::move(r));
      engine.run_until_idle();
      EXPECT_EQ(got[1].tokens, ref);
      EXPECT_EQ(got[2].tokens, ref);
      expect_no_leak(engine);
    }
  }
}

// The fixtures' config.json and generation_config.json say EOS is token 2, which the
// references never produce: this runner lets a test choose the EOS ids.
class EosRunner : public ModelRunner {
 public:
  EosRunner(std::shared_ptr<const CpuModel> model, std::vector<int32_t> eos)
      : inner_(std::move(model)), config_(inner_.config()) {
    config_.eos_token_ids = std::move(eos);
  }
  const ModelConfig& config() const override { return config_; }
  std::string device_name() const override { return "cpu"; }
  KvCacheSizing prepare(int32_t a, int32_t b, int32_t c, int32_t d, double e) override {
    return inner_.prepare(a, b, c, d, e);
  }
  void allocate_kv_cache(int32_t n) override { inner_.allocate_kv_cache(n); }
  std::vector<SampledToken> execute(const StepInput& step) override { return inner_.execute(step); }

 private:
  CpuRunner inner_;
  ModelConfig config_;
};

// Output of a greedy request of fixture case `c` under `params` (greedy, seed irrelevant).
Collected run_one(const Case& c, const SamplingParams& params, std::vector<int32_t> eos = {},
                  bool async = false) {
  const Fixture& f = fixture("llama3-gqa");
  Engine engine(std::make_unique<EosRunner>(f.model, std::move(eos)), nullptr,
                scheduled(small_config(), async));
  Collected got;
  engine.add_request(request_for(c.prompt, params, got));
  engine.run_until_idle();
  expect_no_leak(engine);
  EXPECT_TRUE(got.finished);
  return got;
}

// Prompt logprobs against a full forward's log-softmax of the prompt, computed here in double.
void expect_prompt_logprobs(const std::vector<int32_t>& prompt, const Collected& got, int32_t top) {
  const Fixture& f = fixture("llama3-gqa");
  const std::vector<float> logits = f.model->forward(prompt);
  const auto vocab = static_cast<size_t>(f.model->config().vocab_size);
  ASSERT_EQ(got.prompt_logprobs.size(), prompt.size() - 1);
  EXPECT_EQ(got.outputs_with_prompt_logprobs, 1);
  for (size_t q = 1; q < prompt.size(); ++q) {
    const float* row = &logits[(q - 1) * vocab];
    double max = row[0];
    for (size_t i = 0; i < vocab; ++i) max = std::max(max, static_cast<double>(row[i]));
    double sum = 0;
    for (size_t i = 0; i < vocab; ++i) sum += std::exp(row[i] - max);
    const double log_z = max + std::log(sum);
    std::vector<int32_t> order(vocab);
    for (size_t i = 0; i < vocab; ++i) order[i] = static_cast<int32_t>(i);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    const PromptLogprob& lp = got.prompt_logprobs[q - 1];
    EXPECT_EQ(lp.token, prompt[q]);
    EXPECT_NEAR(lp.logprob, row[prompt[q]] - log_z, 1e-4) << "position " << q;
    const auto rank = std::find(order.begin(), order.end(), prompt[q]) - order.begin() + 1;
    EXPECT_EQ(lp.rank, rank) << "position " << q;
    ASSERT_EQ(lp.top_logprobs.size(), static_cast<size_t>(top));
    for (int32_t k = 0; k < top; ++k) {
      EXPECT_EQ(lp.top_logprobs[k].first, order[k]) << "position " << q << " top " << k;
      EXPECT_NEAR(lp.top_logprobs[k].second, row[order[k]] - log_z, 1e-4);
    }
  }
}

TEST(EnginePromptLogprobs, EqualAFullForwardsLogSoftmaxWhateverTheChunksCacheAndPreemption) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama3-gqa");
    for (bool caching : {false, true}) {
      EngineConfig c = scheduled(small_config(), async);
      c.enable_prefix_caching = caching;
      c.block_size = 4;
      c.num_kv_blocks = 47;  // preemption, as in PreemptionGivesTheSameTokens
      c.max_model_len = 46 * 4;
      c.max_num_batched_tokens = 13;  // chunks that end mid-block
      Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
      std::vector<Collected> got(4);
      // The 150-token prompt once without prompt logprobs, so caching has it; then again with.
      engine.add_request(request_for(f.cases[2].prompt, greedy_params(8), got[0]));
      engine.run_until_idle();
      for (size_t i = 0; i < 3; ++i) {
        GenerationRequest r =
            request_for(f.cases[i == 0 ? 2 : i - 1].prompt, greedy_params(), got[i + 1]);
        r.prompt_logprobs = static_cast<int32_t>(i * 2);  // 0, 2, 4 top tokens
        engine.add_request(std::move(r));
      }
      engine.run_until_idle();
      EXPECT_TRUE(got[0].prompt_logprobs.empty());
      expect_prompt_logprobs(f.cases[2].prompt, got[1], 0);
      expect_prompt_logprobs(f.cases[0].prompt, got[2], 2);
      expect_prompt_logprobs(f.cases[1].prompt, got[3], 4);
      EXPECT_EQ(got[1].tokens, f.cases[2].greedy);  // and the output is unchanged
      EXPECT_EQ(got[3].tokens, f.cases[1].greedy);
      const EngineStats st = engine.stats();
      EXPECT_GT(st.preemptions, 0) << "caching " << caching;
      if (caching) {
        EXPECT_EQ(st.prefix_cache_hits, 0) << "a request for prompt logprobs took cached blocks";
      }
      expect_no_leak(engine);
    }
  }
}

TEST(EnginePromptLogprobs, PromptOnlyEndsAfterThePromptAndOtherRunnersRefuse) {
  const Fixture& f = fixture("llama3-gqa");
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, small_config());
  Collected got, one;
  GenerationRequest r = request_for(f.cases[1].prompt, greedy_params(5), got);
  r.prompt_logprobs = 1;
  r.prompt_only = true;
  engine.add_request(std::move(r));
  r = request_for({7}, greedy_params(5), one);  // one token: nothing to report
  r.prompt_logprobs = 0;
  r.prompt_only = true;
  engine.add_request(std::move(r));
  engine.run_until_idle();
  EXPECT_TRUE(got.finished);
  EXPECT_EQ(got.last.finish_reason, FinishReason::kLength);
  EXPECT_TRUE(got.tokens.empty());
  EXPECT_EQ(got.last.prompt_tokens, 17);
  expect_prompt_logprobs(f.cases[1].prompt, got, 1);
  EXPECT_TRUE(one.finished);
  EXPECT_TRUE(one.prompt_logprobs.empty());
  EXPECT_EQ(engine.stats().generation_tokens, 0);
  expect_no_leak(engine);

  Collected bad;
  r = request_for(f.cases[1].prompt, greedy_params(5), bad);
  r.prompt_logprobs = 21;
  EXPECT_THROW(engine.add_request(std::move(r)), Error);
  // A runner without prompt logprobs refuses them at once.
  Engine other(std::make_unique<EosRunner>(f.model, std::vector<int32_t>{}), nullptr,
               small_config());
  r = request_for(f.cases[1].prompt, greedy_params(5), bad);
  r.prompt_logprobs = 0;
  EXPECT_THROW(other.add_request(std::move(r)), Error);
  EXPECT_FALSE(other.has_unfinished());
}

// Index of the first occurrence of `token` at or after `from` in `v`, or -1.
int first_at(const std::vector<int32_t>& v, int32_t token, size_t from = 0) {
  for (size_t i = from; i < v.size(); ++i)
    if (v[i] == token) return static_cast<int>(i);
  return -1;
}

// vLLM's allowed_token_ids: each greedy token is the most likely of the allowed ones under the
// model (checked with a full forward of the sequence so far), even where the model prefers
// another token; EOS outside the set does not end the output.
TEST(Engine, AllowedTokenIdsRestrictEveryStep) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama3-gqa");
    const Case& c = f.cases[1];
    SamplingParams p = greedy_params(8);
    // The set holds the reference's second token but not its first: the first step must leave
    // the model's choice.
    p.allowed_token_ids = {c.greedy[1], 7, 11, 13};
    if (std::find(p.allowed_token_ids.begin(), p.allowed_token_ids.end(), c.greedy[0]) !=
        p.allowed_token_ids.end())
      GTEST_SKIP() << "the fixture's first token is in the set";
    const Collected got = run_one(c, p, /*eos=*/{7}, async);
    ASSERT_EQ(got.tokens.size(), 8u);  // 7 is EOS here, but allowed tokens do not stop early
    std::vector<int32_t> seq = c.prompt;
    const auto vocab = static_cast<size_t>(f.model->config().vocab_size);
    for (const int32_t t : got.tokens) {
      const std::vector<float> logits = f.model->forward(seq);
      const float* last = logits.data() + (seq.size() - 1) * vocab;
      int32_t best = p.allowed_token_ids[0];
      for (const int32_t a : p.allowed_token_ids)
        if (last[a] > last[best] || (last[a] == last[best] && a < best)) best = a;
      EXPECT_EQ(t, best) << "token " << seq.size() - c.prompt.size();
      seq.push_back(t);
    }
    EXPECT_NE(got.tokens[0], c.greedy[0]);
  }
}

TEST(Engine, StopTokensMinTokensAndEos) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Case& c = fixture("llama3-gqa").cases[1];
    const std::vector<int32_t>& ref = c.greedy;

    SamplingParams p = greedy_params();
    p.stop_token_ids = {ref[6]};
    Collected got = run_one(c, p, {}, async);
    const int at = first_at(ref, ref[6]);
    EXPECT_EQ(got.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + at + 1));
    EXPECT_EQ(got.last.finish_reason, FinishReason::kStop);
    EXPECT_EQ(got.last.stop_reason, std::to_string(ref[6]));
    EXPECT_EQ(got.last.stop_token_id, ref[6]);

    // min_tokens: the stop token is masked out of sampling before it (vLLM's min_tokens), so
    // greedy takes the next-best token where it stood and goes on from there; a stop token may
    // end the output only after min_tokens tokens.
    p.min_tokens = at + 2;
    got = run_one(c, p, {}, async);
    ASSERT_GE(got.tokens.size(), static_cast<size_t>(p.min_tokens));
    EXPECT_EQ(std::vector<int32_t>(got.tokens.begin(), got.tokens.begin() + at),
              std::vector<int32_t>(ref.begin(), ref.begin() + at));
    for (int i = 0; i < p.min_tokens; ++i)
      EXPECT_NE(got.tokens[i], ref[6]) << "the stop token at " << i << ", before min_tokens";
    if (got.last.finish_reason == FinishReason::kStop) {
      EXPECT_EQ(got.tokens.back(), ref[6]);
      EXPECT_GT(got.tokens.size(), static_cast<size_t>(p.min_tokens));
    } else {
      EXPECT_EQ(got.last.finish_reason, FinishReason::kLength);
    }

    // max_tokens.
    got = run_one(c, greedy_params(5), {}, async);
    EXPECT_EQ(got.tokens, std::vector<int32_t>(ref.begin(), ref.begin() + 5));
    EXPECT_EQ(got.last.finish_reason, FinishReason::kLength);
    EXPECT_EQ(got.last.completion_tokens, 5);

    // EOS from the model config, unless ignore_eos.
    p = greedy_params();
    p.ignore_eos = false;
    got = run_one(c, p, {ref[9]}, async);
    EXPECT_EQ(got.tokens.size(), static_cast<size_t>(first_at(ref, ref[9]) + 1));
    EXPECT_EQ(got.last.finish_reason, FinishReason::kStop);
    EXPECT_EQ(got.last.stop_reason, "");
    p.ignore_eos = true;
    got = run_one(c, p, {ref[9]}, async);
    EXPECT_EQ(got.tokens, ref);
    // EOS is masked out before min_tokens too; with ignore_eos it is an ordinary token.
    const int eos_at = first_at(ref, ref[9]);
    p.ignore_eos = false;
    p.min_tokens = eos_at + 1;
    got = run_one(c, p, {ref[9]}, async);
    ASSERT_GE(got.tokens.size(), static_cast<size_t>(p.min_tokens));
    EXPECT_EQ(std::vector<int32_t>(got.tokens.begin(), got.tokens.begin() + eos_at),
              std::vector<int32_t>(ref.begin(), ref.begin() + eos_at));
    for (int i = 0; i < p.min_tokens; ++i) EXPECT_NE(got.tokens[i], ref[9]) << "EOS at " << i;
    p.ignore_eos = true;
    got = run_one(c, p, {ref[9]}, async);
    EXPECT_EQ(got.tokens, ref);
  }
}

TEST(Engine, MaxModelLenEndsWithLength) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama3-gqa");
    EngineConfig config = scheduled(small_config(), async);
    config.max_model_len = 20;
    Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, config);
    Collected got;
    engine.add_request(request_for(f.cases[1].prompt, greedy_params(), got));  // 17 tokens
    engine.run_until_idle();
    EXPECT_EQ(got.tokens,
              std::vector<int32_t>(f.cases[1].greedy.begin(), f.cases[1].greedy.begin() + 3));
    EXPECT_EQ(got.last.finish_reason, FinishReason::kLength);
    expect_no_leak(engine);
  }
}

// A byte-free tokenizer over the fixtures' 512 ids: id i is one printable ASCII character
// (i < 94) or two, so decoding is concatenation and stop strings can span tokens.
std::string token_text(int32_t id) {
  std::string s(1, static_cast<char>(33 + id % 94));
  if (id >= 94) s += static_cast<char>(33 + id / 94);
  return s;
}

const Tokenizer& test_tokenizer() {
  static const Tokenizer tokenizer = [] {
    nlohmann::json vocab = nlohmann::json::object();
    for (int32_t id = 0; id < 512; ++id) vocab[token_text(id)] = id;
    const nlohmann::json spec = {
        {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
    return Tokenizer::from_json(spec.dump());
  }();
  return tokenizer;
}

// vLLM stops at the tokenizer's EOS as well as the config's: a config without eos_token_id
// (synthetic models, some checkpoints) must still end, and a finished grammar needs that EOS.
TEST(Engine, TokenizerEosJoinsTheConfigsEosTokens) {
  const Fixture& f = fixture("llama3-gqa");
  const Case& c = f.cases[1];
  const std::vector<int32_t>& ref = c.greedy;
  const int32_t eos = ref[7];
  nlohmann::json vocab = nlohmann::json::object();
  for (int32_t id = 0; id < 512; ++id) vocab[token_text(id)] = id;
  const nlohmann::json spec = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  const nlohmann::json tokenizer_config = {{"eos_token", token_text(eos)}};
  const Tokenizer tokenizer = Tokenizer::from_json(spec.dump(), tokenizer_config.dump());
  ASSERT_EQ(tokenizer.token_to_id(tokenizer.eos_token()), eos);

  Engine engine(std::make_unique<EosRunner>(f.model, std::vector<int32_t>{}), &tokenizer,
                small_config());
  EXPECT_EQ(engine.eos_token_ids(), std::vector<int32_t>{eos});
  SamplingParams p = greedy_params();
  p.ignore_eos = false;
  Collected got;
  engine.add_request(request_for(c.prompt, p, got));
  engine.run_until_idle();
  EXPECT_EQ(got.tokens.size(), static_cast<size_t>(first_at(ref, eos) + 1));
  EXPECT_EQ(got.last.finish_reason, FinishReason::kStop);
  expect_no_leak(engine);

  // Already in the config: not listed twice. Without a tokenizer: the config's alone.
  Engine both(std::make_unique<EosRunner>(f.model, std::vector<int32_t>{ref[2], eos}), &tokenizer,
              small_config());
  EXPECT_EQ(both.eos_token_ids(), (std::vector<int32_t>{ref[2], eos}));
  Engine none(std::make_unique<EosRunner>(f.model, std::vector<int32_t>{}), nullptr,
              small_config());
  EXPECT_TRUE(none.eos_token_ids().empty());
}

TEST(EngineStopStrings, CheckerHoldsBackPossibleStarts) {
  StopStringChecker checker({"abc", "xyz"});
  auto r = checker.push("hello a");
  EXPECT_EQ(r.text, "hello ");  // "a" may start "abc"
  EXPECT_FALSE(r.matched);
  r = checker.push("b");
  EXPECT_EQ(r.text, "");
  r = checker.push("d x");
  EXPECT_EQ(r.text, "abd ");
  r = checker.push("y");
  EXPECT_EQ(r.text, "");
  r = checker.push("zzz");
  EXPECT_EQ(r.text, "");
  ASSERT_TRUE(r.matched);
  EXPECT_EQ(*r.matched, 1u);
  EXPECT_TRUE(checker.stopped());
  EXPECT_EQ(checker.push("more").text, "");

  StopStringChecker earliest({"cd", "bcde"});
  r = earliest.push("abcdef");
  EXPECT_EQ(r.text, "a");
  EXPECT_EQ(*r.matched, 1u);

  StopStringChecker included({"cd", "bcde"}, /*include_stop=*/true);
  r = included.push("abc");
  EXPECT_EQ(r.text, "a");  // "bc" may start "bcde"
  r = included.push("def");
  EXPECT_EQ(r.text, "bcde");  // the earliest stop string ends the text, itself included
  EXPECT_EQ(*r.matched, 1u);

  // Before min_tokens (match false) nothing matches, but a possible start is still held: a
  // stop string that starts there and ends in the first piece that may match ends the text.
  StopStringChecker off({"ab"});
  EXPECT_EQ(off.push("xa", false).text, "x");
  r = off.push("b");
  EXPECT_EQ(r.text, "");
  ASSERT_TRUE(r.matched);
  StopStringChecker early({"ab"});
  EXPECT_EQ(early.push("xab", false).text, "xab");  // a whole stop string before: only text
  EXPECT_EQ(early.push("a", false).text, "");
  EXPECT_EQ(early.push("c").text, "ac");
  EXPECT_FALSE(early.stopped());
  EXPECT_EQ(early.push("za").text, "z");
  EXPECT_EQ(early.flush(), "a");
  // A held tail may hold a shorter stop string whole: made before min_tokens, it stays text.
  StopStringChecker nested({"\n", "\n\nUser:"});
  EXPECT_EQ(nested.push("Hi\n\nUs", false).text, "Hi");
  r = nested.push("er");
  EXPECT_FALSE(r.matched);
  EXPECT_EQ(r.text, "");
  r = nested.push(":");
  ASSERT_TRUE(r.matched);
  EXPECT_EQ(*r.matched, 1u);
  StopStringChecker inner({"b", "abc"});
  EXPECT_EQ(inner.push("xab", false).text, "x");
  r = inner.push("x");
  EXPECT_FALSE(r.matched);
  EXPECT_EQ(r.text, "abx");
}

// The text of a case's greedy continuation and a stop string across the boundary of its tokens
// 6 and 7: where the stop string first starts in the text, the token that completes it, and
// where that token's text begins.
struct StopAcrossTokens {
  std::string full, stop;
  size_t at = 0, last = 0, last_begins = 0;
};
StopAcrossTokens stop_across_tokens(const Case& c) {
  StopAcrossTokens s;
  std::vector<size_t> ends;  // text length after each reference token
  for (int32_t t : c.greedy) {
    s.full += token_text(t);
    ends.push_back(s.full.size());
  }
  s.stop = s.full.substr(ends[5] - 1, 3);
  s.at = s.full.find(s.stop);
  while (ends[s.last] < s.at + s.stop.size()) ++s.last;
  s.last_begins = s.last > 0 ? ends[s.last - 1] : 0;
  return s;
}

// What a front end runs on the engine's token ids (`generate` does this; the server does it on
// its HTTP threads): the text and stop strings by an OutputProcessor, and the abort of a request
// whose text met a stop string. Drops what the processor drops.
GenerationRequest request_with_text(Engine& engine, OutputProcessor& text, int64_t key,
                                    std::vector<int32_t> prompt, const SamplingParams& params,
                                    Collected& into) {
  text.add(key, params);
  GenerationRequest r = request_for(std::move(prompt), params, into);
  r.params.stop.clear();  // the output side's
  r.on_output = [&engine, &text, key, inner = r.on_output](const RequestOutput& engine_out) {
    RequestOutput out = engine_out;
    const OutputProcessor::Verdict verdict = text.process(key, out);
    if (verdict == OutputProcessor::Verdict::kDrop) return;
    if (verdict == OutputProcessor::Verdict::kEnded) engine.abort(out.request_id);
    inner(out);
  };
  return r;
}

TEST(EngineStopStrings, StopStringEndsOutputAndIsNotStreamed) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("qwen2-tied");
    const Case& c = f.cases[0];
    const auto [full, stop, at, last, last_begins] = stop_across_tokens(c);

    Engine engine(std::make_unique<CpuRunner>(f.model), &test_tokenizer(),
                  scheduled(small_config(), async));
    OutputProcessor text(&test_tokenizer());
    SamplingParams p = greedy_params();
    p.stop = {"never-there", stop};
    Collected got;
    GenerationRequest r = request_with_text(engine, text, 0, c.prompt, p, got);
    auto inner = r.on_output;
    r.on_output = [&, inner](const RequestOutput& o) {
      inner(o);
      EXPECT_EQ(got.text.find(stop), std::string::npos) << "stop string streamed";
      EXPECT_EQ(got.text, full.substr(0, got.text.size())) << "streamed text is not a prefix";
    };
    engine.add_request(std::move(r));
    engine.run_until_idle();
    EXPECT_EQ(got.tokens, std::vector<int32_t>(c.greedy.begin(), c.greedy.begin() + last + 1));
    EXPECT_EQ(got.text, full.substr(0, at));
    EXPECT_EQ(got.last.finish_reason, FinishReason::kStop);
    EXPECT_EQ(got.last.stop_reason, stop);
    expect_no_leak(engine);

    // vLLM's include_stop_str_in_output: the same tokens, the text up to the stop string's end.
    Collected included;
    p.include_stop_str_in_output = true;
    engine.add_request(request_with_text(engine, text, 1, c.prompt, p, included));
    engine.run_until_idle();
    EXPECT_EQ(included.tokens, got.tokens);
    EXPECT_EQ(included.text, full.substr(0, at + stop.size()));
    EXPECT_EQ(included.last.stop_reason, stop);
    p.include_stop_str_in_output = false;
    expect_no_leak(engine);

    // Without a stop string the streamed text is the whole decode, even with a held-back tail.
    Collected plain;
    p.stop = {full.substr(full.size() - 1) + "~never"};
    engine.add_request(request_with_text(engine, text, 2, c.prompt, p, plain));
    engine.run_until_idle();
    EXPECT_EQ(plain.tokens, c.greedy);
    EXPECT_EQ(plain.text, full);
    EXPECT_EQ(plain.last.finish_reason, FinishReason::kLength);
    expect_no_leak(engine);
    EXPECT_EQ(text.size(), 0u) << "the processor still tracks a finished request";
  }
}

// The server's HTTP threads read outputs behind the engine thread: the engine runs on past a
// stop string until the abort reaches it. What it made after the stop is dropped: the output
// is the same as when the stop is seen at once, and no block is left behind.
TEST(EngineStopStrings, AStopSeenStepsLateEndsTheOutputAtTheStop) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("qwen2-tied");
    const Case& c = f.cases[0];
    const auto [full, stop, at, last, last_begins] = stop_across_tokens(c);

    Engine engine(std::make_unique<CpuRunner>(f.model), &test_tokenizer(),
                  scheduled(small_config(), async));
    OutputProcessor text(&test_tokenizer());
    SamplingParams p = greedy_params();
    p.stop = {stop};
    p.logprobs = 0;
    text.add(0, p);
    std::vector<RequestOutput> arrived;
    GenerationRequest r;
    r.prompt = c.prompt;
    r.params = p;
    r.params.stop.clear();  // the output side's
    r.on_output = [&arrived](const RequestOutput& o) { arrived.push_back(o); };
    const int64_t id = engine.add_request(std::move(r));
    Collected got;
    const auto collect = request_for({}, p, got).on_output;
    const auto read = [&] {
      for (RequestOutput& o : std::exchange(arrived, {})) {
        const OutputProcessor::Verdict verdict = text.process(0, o);
        if (verdict == OutputProcessor::Verdict::kDrop) continue;
        if (verdict == OutputProcessor::Verdict::kEnded) engine.abort(id);
        collect(o);
      }
    };
    // The reader looks every third step (fourth under asynchronous scheduling, whose outputs
    // come a step later, so the stop is not read the step it arrives).
    const int every = async ? 4 : 3;
    for (int step = 0; engine.has_unfinished(); ++step) {
      engine.step();
      if (step % every == every - 1) read();
    }
    read();
    EXPECT_EQ(got.tokens, std::vector<int32_t>(c.greedy.begin(), c.greedy.begin() + last + 1));
    EXPECT_EQ(got.logprobs.size(), got.tokens.size());
    EXPECT_EQ(got.text, full.substr(0, at));
    EXPECT_EQ(got.last.finish_reason, FinishReason::kStop);
    EXPECT_EQ(got.last.stop_reason, stop);
    EXPECT_EQ(got.last.completion_tokens, static_cast<int32_t>(last) + 1);
    EXPECT_GT(engine.stats().generation_tokens, static_cast<int64_t>(last) + 1)
        << "the engine did not run past the stop: the test does not test the late reader";
    EXPECT_EQ(text.size(), 0u);
    expect_no_leak(engine);
  }
}

// min_tokens holds stop strings back: the stop string that ends the output in the test above,
// met before min_tokens tokens, streams as text and the output goes on past it.
TEST(EngineStopStrings, NoStopStringBeforeMinTokens) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("qwen2-tied");
    const Case& c = f.cases[0];
    const auto [full, stop, at, last, last_begins] = stop_across_tokens(c);

    Engine engine(std::make_unique<CpuRunner>(f.model), &test_tokenizer(),
                  scheduled(small_config(), async));
    SamplingParams p = greedy_params();
    p.stop = {stop};
    p.min_tokens = static_cast<int32_t>(last) + 1;  // the completing token is within min_tokens
    Collected got;
    OutputProcessor text(&test_tokenizer());
    engine.add_request(request_with_text(engine, text, 0, c.prompt, p, got));
    engine.run_until_idle();
    EXPECT_GT(got.tokens.size(), last + 1) << "stopped at a stop string before min_tokens";
    ASSERT_LE(got.tokens.size(), c.greedy.size());
    EXPECT_EQ(got.tokens,
              std::vector<int32_t>(c.greedy.begin(), c.greedy.begin() + got.tokens.size()));
    EXPECT_EQ(got.text, full.substr(0, got.text.size())) << "streamed text is not a prefix";
    EXPECT_GT(got.text.size(), at + stop.size()) << "the early stop string is part of the text";
    if (got.last.finish_reason == FinishReason::kStop) {
      EXPECT_GT(static_cast<int32_t>(got.tokens.size()), p.min_tokens);
    }
    expect_no_leak(engine);
  }
}

// A stop string that starts in text made before min_tokens and ends in the first token that may
// stop the output (the one after the first min_tokens) ends it there, as in vLLM (which looks
// for stop strings in the tail of the text once the output is longer than min_tokens): the same
// tokens and text as without min_tokens.
TEST(EngineStopStrings, StopStringAcrossTheMinTokensBoundary) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("qwen2-tied");
    const Case& c = f.cases[0];
    const auto [full, stop, at, last, last_begins] = stop_across_tokens(c);

    Engine engine(std::make_unique<CpuRunner>(f.model), &test_tokenizer(),
                  scheduled(small_config(), async));
    SamplingParams p = greedy_params();
    p.stop = {stop};
    p.min_tokens = static_cast<int32_t>(last);  // the token that completes it may stop
    ASSERT_LT(at, last_begins)
        << "the stop string does not start before the token that completes it";
    Collected got;
    OutputProcessor text(&test_tokenizer());
    engine.add_request(request_with_text(engine, text, 0, c.prompt, p, got));
    engine.run_until_idle();
    EXPECT_EQ(got.tokens, std::vector<int32_t>(c.greedy.begin(), c.greedy.begin() + last + 1));
    EXPECT_EQ(got.text, full.substr(0, at));
    EXPECT_EQ(got.last.finish_reason, FinishReason::kStop);
    EXPECT_EQ(got.last.stop_reason, stop);
    expect_no_leak(engine);
  }
}

TEST(Engine, SeededSamplingIsReproducibleWhateverRunsBeside) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama2-mha");
    SamplingParams p;
    p.temperature = 0.9f;
    p.top_k = 50;
    p.top_p = 0.95f;
    p.max_tokens = 24;
    p.ignore_eos = true;
    p.seed = 1234;

    int64_t last_preemptions = 0;
    auto run = [&](EngineConfig config, bool crowd) {
      Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, config);
      Collected alone, other1, other2;
      if (crowd) {
        SamplingParams q = p;
        q.seed = 99;
        engine.add_request(request_for(f.cases[2].prompt, q, other1));
        engine.add_request(request_for(f.cases[0].prompt, greedy_params(), other2));
      }
      engine.add_request(request_for(f.cases[1].prompt, p, alone));
      engine.run_until_idle();
      expect_no_leak(engine);
      last_preemptions = engine.stats().preemptions;
      return alone.tokens;
    };
    const auto reference = run(scheduled(small_config(), async), false);
    ASSERT_EQ(reference.size(), 24u);
    EXPECT_NE(reference,
              std::vector<int32_t>(f.cases[1].greedy.begin(), f.cases[1].greedy.begin() + 24))
        << "temperature 0.9 should not reproduce greedy";
    EXPECT_EQ(run(scheduled(small_config(), async), true), reference);
    EngineConfig chunked = scheduled(small_config(), async);
    chunked.max_num_batched_tokens = 6;
    chunked.block_size = 4;
    chunked.num_kv_blocks = 45;  // 176 tokens: preemptions too
    chunked.max_model_len = 176;
    chunked.max_num_seqs = 4;
    EXPECT_EQ(run(chunked, true), reference);
    EXPECT_GT(last_preemptions, 0);

    // Requests without a seed draw theirs from EngineConfig::seed.
    auto unseeded = [&](uint64_t engine_seed) {
      EngineConfig config = scheduled(small_config(), async);
      config.seed = engine_seed;
      Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, config);
      SamplingParams q = p;
      q.seed.reset();
      Collected a, b;
      engine.add_request(request_for(f.cases[0].prompt, q, a));
      engine.add_request(request_for(f.cases[1].prompt, q, b));
      engine.run_until_idle();
      return std::pair{a.tokens, b.tokens};
    };
    EXPECT_EQ(unseeded(7), unseeded(7));
    EXPECT_NE(unseeded(7), unseeded(8));
  }
}

TEST(Engine, LogprobsComeWithEveryToken) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama3-gqa");
    Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, scheduled(small_config(), async));
    SamplingParams p = greedy_params(6);
    p.logprobs = 3;
    Collected got;
    engine.add_request(request_for(f.cases[0].prompt, p, got));
    engine.run_until_idle();
    ASSERT_EQ(got.logprobs.size(), 6u);
    for (size_t i = 0; i < 6; ++i) {
      EXPECT_EQ(got.logprobs[i].token, got.tokens[i]);
      EXPECT_LE(got.logprobs[i].logprob, 0.f);
      ASSERT_EQ(got.logprobs[i].top_logprobs.size(), 3u);
      EXPECT_EQ(got.logprobs[i].top_logprobs[0].first, got.tokens[i]);  // greedy: the best
    }
  }
}

TEST(Engine, InvalidRequestsAreRejectedAndLeakNothing) {
  const Fixture& f = fixture("llama3-gqa");
  EngineConfig config = small_config();
  config.max_model_len = 100;
  config.num_kv_blocks = 8;  // 112 tokens: every prompt within max_model_len fits
  config.max_num_seqs = 4;
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, config);
  auto rejects = [&](std::vector<int32_t> prompt, SamplingParams p, const std::string& words) {
    Collected got;
    try {
      engine.add_request(request_for(std::move(prompt), std::move(p), got));
      ADD_FAILURE() << "accepted; expected an error with '" << words << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
    EXPECT_EQ(got.callbacks, 0);
    expect_no_leak(engine);
  };
  rejects({}, greedy_params(), "empty");
  rejects({1, 512}, greedy_params(), "512");
  rejects({1, -3}, greedy_params(), "-3");
  SamplingParams bad = greedy_params();
  bad.temperature = -1;
  rejects({1, 2}, bad, "temperature");
  bad = greedy_params();
  bad.top_p = 0;
  rejects({1, 2}, bad, "top_p");
  bad = greedy_params();
  bad.stop = {"x"};
  rejects({1, 2}, bad, "OutputProcessor");  // the output side's: never silently ignored
  rejects(std::vector<int32_t>(101, 1), greedy_params(), "max_model_len 100");

  Collected ok;
  engine.add_request(request_for(f.cases[1].prompt, greedy_params(), ok));
  engine.run_until_idle();
  EXPECT_EQ(ok.tokens, f.cases[1].greedy);
  expect_no_leak(engine);
}

TEST(Engine, ConfigErrorsAreClear) {
  const Fixture& f = fixture("llama3-gqa");
  auto fails = [&](EngineConfig c, const std::string& words) {
    try {
      Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
      ADD_FAILURE() << "expected an error with '" << words << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(words), std::string::npos) << e.what();
    }
  };
  EngineConfig c = small_config();
  c.num_kv_blocks = 1;
  fails(c, "at least 2");
  c = small_config();
  c.max_model_len = 5000;
  fails(c, "max_position_embeddings");
  c = small_config();
  c.gpu_memory_utilization = 0;
  fails(c, "gpu_memory_utilization");
  c = small_config();
  c.block_size = 0;
  fails(c, "block_size");

  // Sized by the runner: max_seqs x max_model_len tokens at most, plus the null block.
  c = EngineConfig{};
  c.max_num_seqs = 4;
  c.block_size = 16;
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
  EXPECT_EQ(engine.config().max_model_len, f.model->config().max_position_embeddings);
  EXPECT_EQ(engine.config().num_kv_blocks, 4 * engine.config().max_model_len / 16 + 1);
  EXPECT_EQ(engine.stats().kv_blocks_total, engine.config().num_kv_blocks - 1);
}

// Each configuration that would stall, starve or deadlock is refused at start, naming the
// flags to change.
TEST(Engine, ConfigurationsThatCannotServeAreRefused) {
  const Fixture& f = fixture("llama3-gqa");
  auto fails = [&](EngineConfig c, std::vector<std::string> words) {
    try {
      Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
      ADD_FAILURE() << "accepted; expected an error with '" << words[0] << "'";
    } catch (const Error& e) {
      for (const std::string& w : words)
        EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
  };
  // Fewer tokens per step than sequences: those past the budget would hold their blocks and
  // wait for older ones to end.
  EngineConfig c = small_config();
  c.max_num_seqs = 8;
  c.max_num_batched_tokens = 7;
  fails(c, {"--max-num-batched-tokens", "--max-num-seqs", "7", "8"});
  // A pool that cannot hold one request of max_model_len (63 blocks of 16 tokens = 1008).
  c = small_config();
  c.max_model_len = 1009;
  fails(c, {"--num-kv-blocks", "--max-model-len", "1008", "1009"});
  c = small_config();
  c.block_size = 2;  // 126 tokens
  fails(c, {"--num-kv-blocks", "--max-model-len", "126"});
  // More sequences than blocks: each running one holds a block.
  c = small_config();
  c.max_num_seqs = 64;
  fails(c, {"--max-num-seqs", "64", "63 blocks"});
  // Sizes of 0.
  c = small_config();
  c.max_num_batched_tokens = 0;
  fails(c, {"--max-num-batched-tokens"});
  c = small_config();
  c.max_num_seqs = 0;
  fails(c, {"--max-num-seqs"});
  c = small_config();
  c.max_model_len = -1;
  fails(c, {"--max-model-len"});
  c = small_config();
  c.num_kv_blocks = 1;
  fails(c, {"--num-kv-blocks", "at least 2"});
  // Sized by the runner: checked the same way once the pool's size is known.
  c = small_config();
  c.num_kv_blocks = 0;
  c.max_num_seqs = 2;
  c.gpu_memory_utilization = 1e-5;  // about 10 KiB of the CPU pool's 1 GiB
  fails(c, {"--gpu-memory-utilization"});

  // The edges that work: as many tokens per step as sequences, a pool of exactly one request.
  c = small_config();
  c.max_num_seqs = 4;
  c.max_num_batched_tokens = 4;
  c.max_model_len = 63 * 16;
  Engine engine(std::make_unique<CpuRunner>(f.model), nullptr, c);
  std::vector<Collected> got(3);
  for (size_t i = 0; i < 3; ++i)
    engine.add_request(request_for(f.cases[i].prompt, greedy_params(), got[i]));
  engine.run_until_idle();
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(got[i].tokens, f.cases[i].greedy) << i;
  expect_no_leak(engine);
}

// Records the order of launch() and collect() calls: "L" and the rows of the previous step's
// tokens the launched step takes (StepSequence::pending_token_row), "C" for a collect.
class RecordingRunner : public ModelRunner {
 public:
  RecordingRunner(std::shared_ptr<const CpuModel> model, std::vector<std::string>& events)
      : inner_(std::move(model)), events_(events) {}
  const ModelConfig& config() const override { return inner_.config(); }
  std::string device_name() const override { return "cpu (recording)"; }
  KvCacheSizing prepare(int32_t a, int32_t b, int32_t c, int32_t d, double e) override {
    return inner_.prepare(a, b, c, d, e);
  }
  void allocate_kv_cache(int32_t n) override { inner_.allocate_kv_cache(n); }
  std::vector<SampledToken> execute(const StepInput& step) override { return inner_.execute(step); }
  void launch(const StepInput& step) override {
    std::string event = "L";
    for (const StepSequence& s : step.sequences)
      if (s.pending_token_row >= 0) event += std::to_string(s.pending_token_row);
    events_.push_back(event);
    ModelRunner::launch(step);
  }
  std::vector<SampledToken> collect(const StepInput& step) override {
    events_.push_back("C");
    return ModelRunner::collect(step);
  }

 private:
  CpuRunner inner_;
  std::vector<std::string>& events_;
};

// Asynchronous scheduling launches step N + 1, its decode rows reading step N's tokens, before
// it collects step N (steps with prompt chunks excepted); a request whose next token surely
// ends it (max_tokens) is not planned again, so the last step is collected alone. Penalties need
// the tokens on the host: each step is collected before the next is planned. A prompt-only request
// ends without a token.
TEST(EngineAsyncScheduling, LaunchesTheNextStepBeforeCollectingAndOnlyWhenItMay) {
  const Fixture& f = fixture("llama3-gqa");
  const Case& c = f.cases[1];
  std::vector<std::string> events;
  {
    Engine engine(std::make_unique<RecordingRunner>(f.model, events), nullptr,
                  scheduled(small_config(), true));
    Collected got;
    engine.add_request(request_for(c.prompt, greedy_params(6), got));
    engine.run_until_idle();
    EXPECT_EQ(got.tokens, std::vector<int32_t>(c.greedy.begin(), c.greedy.begin() + 6));
    EXPECT_EQ(got.last.completion_tokens, 6);
    expect_no_leak(engine);
  }
  const std::vector<std::string> overlapped = {"L", "L0", "C", "L0", "C", "L0",
                                               "C", "L0", "C", "L0", "C", "C"};
  EXPECT_EQ(events, overlapped);

  // Two requests: each decode row names its own row of the step before.
  events.clear();
  {
    Engine engine(std::make_unique<RecordingRunner>(f.model, events), nullptr,
                  scheduled(small_config(), true));
    Collected a, b;
    engine.add_request(request_for(f.cases[0].prompt, greedy_params(3), a));
    engine.add_request(request_for(c.prompt, greedy_params(3), b));
    engine.run_until_idle();
    EXPECT_EQ(a.tokens,
              std::vector<int32_t>(f.cases[0].greedy.begin(), f.cases[0].greedy.begin() + 3));
    EXPECT_EQ(b.tokens, std::vector<int32_t>(c.greedy.begin(), c.greedy.begin() + 3));
    expect_no_leak(engine);
  }
  EXPECT_EQ(events, (std::vector<std::string>{"L", "L01", "C", "L01", "C", "C"}));

  // A request arriving mid-stream: the step with its prompt is launched only after the step
  // before is collected and its tokens delivered ("D": a callback; a prompt step's launches
  // would queue behind the running step), without placeholders.
  events.clear();
  {
    Engine engine(std::make_unique<RecordingRunner>(f.model, events), nullptr,
                  scheduled(small_config(), true));
    Collected a, b;
    const auto recorded = [&events](GenerationRequest r) {
      r.on_output = [&events, inner = std::move(r.on_output)](const RequestOutput& o) {
        events.push_back("D");
        inner(o);
      };
      return r;
    };
    engine.add_request(recorded(request_for(f.cases[0].prompt, greedy_params(4), a)));
    engine.step();
    engine.step();
    engine.add_request(recorded(request_for(c.prompt, greedy_params(2), b)));
    engine.run_until_idle();
    EXPECT_EQ(a.tokens,
              std::vector<int32_t>(f.cases[0].greedy.begin(), f.cases[0].greedy.begin() + 4));
    EXPECT_EQ(b.tokens, std::vector<int32_t>(c.greedy.begin(), c.greedy.begin() + 2));
    expect_no_leak(engine);
  }
  EXPECT_EQ(events, (std::vector<std::string>{"L", "L0", "C", "D", "C", "D", "L", "L01", "C", "D",
                                              "D", "C", "D", "D"}));

  // A callback that aborts a request of the prompt step being launched: the step goes without it.
  events.clear();
  {
    Engine engine(std::make_unique<RecordingRunner>(f.model, events), nullptr,
                  scheduled(small_config(), true));
    Collected a, b, d;
    int64_t b_id = -1;
    GenerationRequest first = request_for(f.cases[0].prompt, greedy_params(4), a);
    first.on_output = [&, inner = std::move(first.on_output)](const RequestOutput& o) {
      inner(o);
      if (a.tokens.size() == 2) engine.abort(b_id);
    };
    engine.add_request(std::move(first));
    engine.step();
    engine.step();
    b_id = engine.add_request(request_for(c.prompt, greedy_params(2), b));
    engine.add_request(request_for(f.cases[2].prompt, greedy_params(2), d));
    engine.run_until_idle();
    EXPECT_EQ(a.tokens,
              std::vector<int32_t>(f.cases[0].greedy.begin(), f.cases[0].greedy.begin() + 4));
    EXPECT_TRUE(b.finished);
    EXPECT_EQ(b.last.finish_reason, FinishReason::kAbort);
    EXPECT_TRUE(b.tokens.empty());
    EXPECT_EQ(d.tokens,
              std::vector<int32_t>(f.cases[2].greedy.begin(), f.cases[2].greedy.begin() + 2));
    expect_no_leak(engine);
  }

  events.clear();
  {
    Engine engine(std::make_unique<RecordingRunner>(f.model, events), nullptr,
                  scheduled(small_config(), true));
    SamplingParams p = greedy_params(3);
    p.repetition_penalty = 1.3f;
    Collected got, prompt_only;
    engine.add_request(request_for(c.prompt, p, got));
    engine.run_until_idle();
    EXPECT_EQ(got.tokens.size(), 3u);
    GenerationRequest r = request_for(c.prompt, greedy_params(5), prompt_only);
    r.prompt_only = true;
    engine.add_request(std::move(r));
    engine.run_until_idle();
    EXPECT_TRUE(prompt_only.finished);
    EXPECT_TRUE(prompt_only.tokens.empty());
    EXPECT_EQ(prompt_only.last.finish_reason, FinishReason::kLength);
    expect_no_leak(engine);
  }
  EXPECT_EQ(events, (std::vector<std::string>{"L", "C", "L", "C", "L", "C", "L", "C"}));
}

// Wraps a CpuRunner and throws on one chosen execute() call.
class FailingRunner : public ModelRunner {
 public:
  FailingRunner(std::shared_ptr<const CpuModel> model, int fail_at)
      : inner_(std::move(model)), fail_at_(fail_at) {}
  const ModelConfig& config() const override { return inner_.config(); }
  std::string device_name() const override { return "cpu (failing)"; }
  KvCacheSizing prepare(int32_t a, int32_t b, int32_t c, int32_t d, double e) override {
    return inner_.prepare(a, b, c, d, e);
  }
  void allocate_kv_cache(int32_t n) override { inner_.allocate_kv_cache(n); }
  std::vector<SampledToken> execute(const StepInput& step) override {
    if (++calls_ == fail_at_) throw Error("simulated device failure");
    return inner_.execute(step);
  }

 private:
  CpuRunner inner_;
  int fail_at_;
  int calls_ = 0;
};

TEST(Engine, RunnerFailureFailsItsStepsRequestsAndLeaksNothing) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama2-mha");
    EngineConfig config = scheduled(small_config(), async);
    config.max_num_batched_tokens = 20;  // case 2's prompt takes several steps
    Engine engine(std::make_unique<FailingRunner>(f.model, 4), nullptr, config);
    std::vector<Collected> got(3);
    for (size_t i = 0; i < 3; ++i)
      engine.add_request(request_for(f.cases[i].prompt, greedy_params(), got[i]));
    engine.run_until_idle();
    int failed = 0;
    for (const Collected& g : got) {
      ASSERT_TRUE(g.finished);
      if (g.last.finish_reason == FinishReason::kError) {
        ++failed;
        EXPECT_NE(g.last.error.find("simulated device failure"), std::string::npos) << g.last.error;
      }
    }
    EXPECT_GT(failed, 0);
    expect_no_leak(engine);

    // The engine keeps working.
    std::vector<Collected> again(3);
    for (size_t i = 0; i < 3; ++i)
      engine.add_request(request_for(f.cases[i].prompt, greedy_params(), again[i]));
    engine.run_until_idle();
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(again[i].tokens, f.cases[i].greedy) << i;
    expect_no_leak(engine);
  }
}

// A device that fails for good: from one execute() call on every call throws, and
// device_fault() reports the sticky error, as CudaRunner does after an illegal address.
class LostDeviceRunner : public ModelRunner {
 public:
  LostDeviceRunner(std::shared_ptr<const CpuModel> model, int lost_at)
      : inner_(std::move(model)), lost_at_(lost_at) {}
  const ModelConfig& config() const override { return inner_.config(); }
  std::string device_name() const override { return "cpu (lost)"; }
  KvCacheSizing prepare(int32_t a, int32_t b, int32_t c, int32_t d, double e) override {
    return inner_.prepare(a, b, c, d, e);
  }
  void allocate_kv_cache(int32_t n) override { inner_.allocate_kv_cache(n); }
  std::vector<SampledToken> execute(const StepInput& step) override {
    if (++calls_ >= lost_at_) throw Error("CUDA error cudaErrorIllegalAddress (simulated)");
    return inner_.execute(step);
  }
  std::string device_fault() override {
    return calls_ >= lost_at_ ? "cudaErrorIllegalAddress (simulated, sticky)" : "";
  }

 private:
  CpuRunner inner_;
  int lost_at_;
  int calls_ = 0;
};

TEST(Engine, LostDeviceFailsEveryRequestAndRefusesNewOnes) {
  for (const bool async : kBothSchedulings) {
    SCOPED_TRACE(scheduling_name(async));
    const Fixture& f = fixture("llama2-mha");
    EngineConfig config = scheduled(small_config(), async);
    config.max_num_seqs = 1;  // one runs, two wait: they fail too, not only the step's
    Engine engine(std::make_unique<LostDeviceRunner>(f.model, 3), nullptr, config);
    EXPECT_EQ(engine.failure(), "");
    std::vector<Collected> got(3);
    for (size_t i = 0; i < 3; ++i)
      engine.add_request(request_for(f.cases[i].prompt, greedy_params(), got[i]));
    engine.run_until_idle();
    EXPECT_NE(engine.failure().find("sticky"), std::string::npos) << engine.failure();
    for (size_t i = 0; i < 3; ++i) {
      ASSERT_TRUE(got[i].finished) << i;
      EXPECT_EQ(got[i].last.finish_reason, FinishReason::kError) << i;
      EXPECT_NE(got[i].last.error.find("sticky"), std::string::npos) << got[i].last.error;
    }
    EXPECT_EQ(engine.stats().steps, 3);  // no step after the device was lost
    expect_no_leak(engine);
    Collected late;
    try {
      engine.add_request(request_for(f.cases[0].prompt, greedy_params(), late));
      ADD_FAILURE() << "accepted after the device was lost";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("device is lost"), std::string::npos) << e.what();
    }
    EXPECT_EQ(late.callbacks, 0);
    expect_no_leak(engine);
  }
}

}  // namespace
}  // namespace l2kv
