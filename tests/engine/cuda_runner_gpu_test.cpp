// The whole engine on the CUDA runner: greedy tokens of the fixtures against transformers
// through CUDA graphs and both decode kernels, with chunked prefill and under preemption;
// seeded sampling independent of the batch; no KV block leaked.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/greedy_reference.h"
#include "gpu_test_support.h"
#include "l2kv/engine/cuda_runner.h"
#include "l2kv/engine/engine.h"
#include "l2kv/kernels/random_fill.h"
#include "l2kv/structured/grammar_matcher.h"
#include "l2kv/structured/regex_grammar.h"

namespace l2kv {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(L2KV_TEST_SOURCE_DIR) / "model" / "fixtures";

// `runner`, when given, receives the engine's runner.
std::unique_ptr<Engine> make_engine(const std::string& name, DecodeKernel kernel,
                                    const char* prefetch, bool graphs, EngineConfig config,
                                    CudaRunner** runner = nullptr) {
  auto model = std::make_shared<CudaModel>(kFixtures / name);
  CudaRunnerOptions options;
  options.attention = kernel;
  options.kv_prefetch = parse_prefetch_policy(prefetch);
  options.cuda_graphs = graphs;
  auto cuda_runner = std::make_unique<CudaRunner>(model, options);
  if (runner) *runner = cuda_runner.get();
  return std::make_unique<Engine>(std::move(cuda_runner), nullptr, config);
}

// `max_model_len` 0: the model's max_position_embeddings (up to 2048 for the fixtures, which
// 129 blocks hold at 16 tokens a block, and at the default 32).
EngineConfig config_with(int32_t max_tokens, int32_t blocks, int32_t max_model_len = 0) {
  EngineConfig c;
  c.max_model_len = max_model_len;
  c.max_num_seqs = 16;
  c.max_num_batched_tokens = max_tokens;
  c.num_kv_blocks = blocks;
  return c;
}

// Runs `prompts` at once, prompt i with params[i]; returns each one's tokens.
std::vector<std::vector<int32_t>> generate(Engine& engine,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const std::vector<SamplingParams>& params) {
  std::vector<std::vector<int32_t>> out(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest r;
    r.prompt = prompts[i];
    r.params = params[i];
    auto* into = &out[i];
    r.on_output = [into](const RequestOutput& o) {
      into->insert(into->end(), o.new_tokens.begin(), o.new_tokens.end());
      EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
    };
    engine.add_request(std::move(r));
  }
  engine.run_until_idle();
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.kv_blocks_free, s.kv_blocks_total) << "KV blocks leaked";
  return out;
}

// The same with one SamplingParams for every prompt.
std::vector<std::vector<int32_t>> generate(Engine& engine,
                                           const std::vector<std::vector<int32_t>>& prompts,
                                           const SamplingParams& params) {
  return generate(engine, prompts, std::vector<SamplingParams>(prompts.size(), params));
}

SamplingParams greedy(int32_t tokens) {
  SamplingParams p;
  p.temperature = 0;
  p.max_tokens = tokens;
  p.ignore_eos = true;
  return p;
}

struct Variant {
  const char* fixture;
  DecodeKernel kernel;
  const char* prefetch;
  bool graphs;
  int32_t max_tokens;  // per step: small values chunk the prompts
};

class CudaEngine : public ::testing::TestWithParam<Variant> {};

TEST_P(CudaEngine, GreedyMatchesTransformers) {
  L2KV_SKIP_WITHOUT_GPU();
  const Variant v = GetParam();
  const auto cases = testing::greedy_cases(kFixtures / v.fixture);
  auto engine =
      make_engine(v.fixture, v.kernel, v.prefetch, v.graphs, config_with(v.max_tokens, 129));
  std::vector<std::vector<SampledToken>> logprobs(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    GenerationRequest r;
    r.prompt = cases[i].prompt;
    r.params = greedy(32);
    r.params.logprobs = 5;  // l2kv's top tokens at each step, to judge where the tokens part
    auto* into = &logprobs[i];
    r.on_output = [into](const RequestOutput& o) {
      into->insert(into->end(), o.new_logprobs.begin(), o.new_logprobs.end());
      EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
    };
    engine->add_request(std::move(r));
  }
  engine->run_until_idle();
  EXPECT_EQ(engine->stats().kv_blocks_free, engine->stats().kv_blocks_total) << "KV blocks leaked";
  for (size_t i = 0; i < cases.size(); ++i) {
    char label[160];
    std::snprintf(label, sizeof label, "%s %s %s graphs %d chunk %d", v.fixture,
                  std::string(decode_kernel_name(v.kernel)).c_str(), v.prefetch, v.graphs,
                  v.max_tokens);
    testing::expect_greedy_near_transformers(logprobs[i], cases[i], label);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Variants, CudaEngine,
    ::testing::Values(Variant{"llama3-gqa", DecodeKernel::kSplit, "auto", true, 2048},
                      Variant{"llama3-gqa", DecodeKernel::kSplit, "auto", false, 2048},
                      Variant{"llama3-gqa", DecodeKernel::kSplit, "auto", true, 24},
                      Variant{"llama3-gqa", DecodeKernel::kPagedV1, "off", true, 2048},
                      Variant{"llama3-gqa", DecodeKernel::kPagedV1, "on", true, 2048},
                      Variant{"llama2-mha", DecodeKernel::kSplit, "auto", true, 2048},
                      Variant{"llama2-mha", DecodeKernel::kPagedV1, "on", true, 40},
                      Variant{"qwen2-tied", DecodeKernel::kSplit, "auto", true, 2048},
                      Variant{"qwen2-tied", DecodeKernel::kPagedV1, "auto", false, 2048},
                      Variant{"llama3-hd128", DecodeKernel::kSplit, "auto", true, 2048},
                      Variant{"llama3-hd128", DecodeKernel::kSplit, "auto", true, 512},
                      Variant{"llama3-hd128", DecodeKernel::kPagedV1, "on", true, 2048},
                      Variant{"gemma3-sliding", DecodeKernel::kSplit, "auto", true, 2048},
                      Variant{"gemma3-sliding", DecodeKernel::kSplit, "auto", false, 24}));

// Gemma 3's sliding-window layers in KV cache groups of their own, whose blocks go back to the
// pool (and to other sequences) as they leave the window, against one table for every layer:
// the same kernels read the same K/V, so tokens and logprobs are equal to the bit. Prompts of
// 20-230 tokens against a window of 16, chunks of 40, no prefix caching (freed blocks go
// straight back to the free list and are the next ones handed out).
TEST(CudaEngineSingle, WindowedKvGroupsGiveTheTokensOfOneTablePerLayer) {
  L2KV_SKIP_WITHOUT_GPU();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 10; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < 20 + 23 * i; ++t) p.push_back((t * 41 + i * 89 + 3) % 512);
    prompts.push_back(p);
  }
  std::vector<std::vector<SampledToken>> got[2];
  int32_t peak[2] = {0, 0};
  for (int windowed = 0; windowed < 2; ++windowed) {
    auto model = std::make_shared<CudaModel>(kFixtures / "gemma3-sliding");
    CudaRunnerOptions options;
    options.window_kv_groups = windowed == 1;
    EngineConfig config = config_with(40, 200);
    config.enable_prefix_caching = false;
    config.block_size = 16;  // the bound below counts blocks of 16
    Engine engine(std::make_unique<CudaRunner>(model, options), nullptr, config);
    got[windowed].resize(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      GenerationRequest r;
      r.prompt = prompts[i];
      r.params = greedy(64);
      r.params.logprobs = 0;
      auto* into = &got[windowed][i];
      r.on_output = [into](const RequestOutput& o) {
        into->insert(into->end(), o.new_logprobs.begin(), o.new_logprobs.end());
        EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
      };
      engine.add_request(std::move(r));
    }
    while (engine.has_unfinished()) {
      engine.step();
      const EngineStats s = engine.stats();
      peak[windowed] = std::max(peak[windowed], s.kv_blocks_total - s.kv_blocks_free);
    }
    EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total) << "KV blocks leaked";
  }
  double max_diff = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(got[0][i].size(), 64u);
    ASSERT_EQ(got[1][i].size(), 64u);
    for (size_t k = 0; k < 64; ++k) {
      ASSERT_EQ(got[1][i][k].token, got[0][i][k].token) << "prompt " << i << " token " << k;
      // Not std::max, which would drop a NaN difference.
      const double diff = std::abs(got[1][i][k].logprob - got[0][i][k].logprob);
      if (!(diff <= max_diff) && !std::isnan(max_diff)) max_diff = diff;
    }
  }
  std::printf(
      "windowed KV groups: peak blocks in use %d (one table per layer: %d, blocks of "
      "half the layers each); largest logprob difference %.3g\n",
      peak[1], peak[0], max_diff);
  EXPECT_EQ(max_diff, 0.0);
  // The same steps in both runs: the global group holds what one table per layer does, the
  // windowed one at most a 40-token chunk and the 15 positions before it per sequence (5 blocks
  // of 16); without freeing it would hold as many as the global group.
  EXPECT_LE(peak[1], peak[0] + static_cast<int32_t>(prompts.size()) * 5);
}

// Graph replay (padded to a bucket) against eager steps (unpadded): the same kernels, but
// the split planner may slice differently with pad rows, so rounding may differ and a
// near-tie may flip late; stale graph buffers would break agreement from the first tokens.
TEST(CudaEngineSingle, GraphsAndEagerAgree) {
  L2KV_SKIP_WITHOUT_GPU();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 11; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < 20 + 13 * i; ++t) p.push_back((t * 53 + i * 71 + 9) % 512);
    prompts.push_back(p);
  }
  for (DecodeKernel kernel : {DecodeKernel::kSplit, DecodeKernel::kPagedV1}) {
    CudaRunner* graph_runner = nullptr;
    CudaRunner* eager_runner = nullptr;
    auto graphs =
        make_engine("llama3-gqa", kernel, "auto", true, config_with(2048, 129), &graph_runner);
    auto eager =
        make_engine("llama3-gqa", kernel, "auto", false, config_with(2048, 129), &eager_runner);
    // Graphs captured for every bucket, the 11 sequences' included (the runner does not count
    // replays); none in the eager engine, so this is not eager against eager.
    const CudaStepState& captured = graph_runner->step_state();
    ASSERT_FALSE(graph_runner->graph_buckets().empty());
    for (const int32_t bucket : graph_runner->graph_buckets())
      EXPECT_TRUE(captured.has_graph(bucket)) << "bucket " << bucket;
    EXPECT_GE(captured.graph_bucket(static_cast<int32_t>(prompts.size())),
              static_cast<int32_t>(prompts.size()));
    EXPECT_TRUE(eager_runner->graph_buckets().empty());
    EXPECT_EQ(eager_runner->step_state().graph_bucket(1), 0);
    const auto a = generate(*graphs, prompts, greedy(40));
    const auto b = generate(*eager, prompts, greedy(40));
    ASSERT_EQ(a.size(), prompts.size());
    ASSERT_EQ(b.size(), prompts.size());
    size_t agree = 0;
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(a[i].size(), 40u) << "prompt " << i;
      EXPECT_EQ(b[i].size(), 40u) << "prompt " << i;
      size_t same = 0;
      while (same < a[i].size() && same < b[i].size() && a[i][same] == b[i][same]) ++same;
      agree += same;
    }
    std::printf("%s: graphs and eager agree on %zu of %zu tokens\n", decode_kernel_name(kernel),
                agree, prompts.size() * 40);
    EXPECT_GE(agree, prompts.size() * 40 * 9 / 10) << decode_kernel_name(kernel);
  }
}

// Asynchronous scheduling on the CUDA runner: step N + 1 is launched before step N's tokens
// reach the host, and the sampler writes its decode rows' input ids on the device. With every
// request ending by length the steps' batches are those of synchronous steps, so greedy and
// seeded tokens and their logprobs are equal to the bit, with graphs and eager. A request that
// stops on a stop token ends there (the token computed after it is dropped); one with a
// penalty, whose steps are waited for on the host, keeps its synchronous tokens up to near-ties.
TEST(CudaEngineSingle, AsynchronousSchedulingGivesTheTokensOfSynchronousSteps) {
  L2KV_SKIP_WITHOUT_GPU();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 11; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < 20 + 13 * i; ++t) p.push_back((t * 59 + i * 67 + 3) % 512);
    prompts.push_back(p);
  }
  std::vector<SamplingParams> params;
  for (int i = 0; i < 11; ++i) {
    SamplingParams p = greedy(40);
    p.logprobs = 2;
    if (i % 2 == 1) {
      p.temperature = 0.8f;
      p.seed = 100 + i;
    }
    params.push_back(p);
  }
  struct Output {
    std::vector<int32_t> tokens;
    std::vector<SampledToken> logprobs;
    FinishReason reason = FinishReason::kNone;
  };
  const auto run = [&](Engine& engine, const std::vector<SamplingParams>& ps) {
    std::vector<Output> out(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      GenerationRequest r;
      r.prompt = prompts[i];
      r.params = ps[i];
      auto* into = &out[i];
      r.on_output = [into](const RequestOutput& o) {
        into->tokens.insert(into->tokens.end(), o.new_tokens.begin(), o.new_tokens.end());
        into->logprobs.insert(into->logprobs.end(), o.new_logprobs.begin(), o.new_logprobs.end());
        EXPECT_EQ(o.completion_tokens, static_cast<int32_t>(into->tokens.size()));
        EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
        into->reason = o.finish_reason;
      };
      engine.add_request(std::move(r));
    }
    engine.run_until_idle();
    EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total) << "KV blocks leaked";
    return out;
  };
  EngineConfig async_config = config_with(2048, 129);
  async_config.async_scheduling = true;
  for (const bool graphs : {true, false}) {
    SCOPED_TRACE(graphs ? "graphs" : "eager");
    auto sync =
        make_engine("llama3-gqa", DecodeKernel::kSplit, "auto", graphs, config_with(2048, 129));
    auto async = make_engine("llama3-gqa", DecodeKernel::kSplit, "auto", graphs, async_config);
    const std::vector<Output> a = run(*sync, params);
    const std::vector<Output> b = run(*async, params);
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_EQ(a[i].tokens.size(), 40u) << "prompt " << i;
      EXPECT_EQ(b[i].tokens, a[i].tokens) << "prompt " << i;
      ASSERT_EQ(b[i].logprobs.size(), a[i].logprobs.size()) << "prompt " << i;
      for (size_t t = 0; t < a[i].logprobs.size(); ++t) {
        EXPECT_EQ(b[i].logprobs[t].logprob, a[i].logprobs[t].logprob) << i << " token " << t;
        EXPECT_EQ(b[i].logprobs[t].top_logprobs, a[i].logprobs[t].top_logprobs) << i << " " << t;
      }
    }
    // A stop token (the sixth greedy token of prompt 0) and a penalty (prompt 1).
    std::vector<SamplingParams> mixed(prompts.size(), greedy(24));
    mixed[0].stop_token_ids = {a[0].tokens[5]};
    mixed[1].repetition_penalty = 1.2f;
    const std::vector<Output> c = run(*sync, mixed);
    const std::vector<Output> d = run(*async, mixed);
    const auto stop_at = std::find(a[0].tokens.begin(), a[0].tokens.end(), a[0].tokens[5]);
    EXPECT_EQ(d[0].tokens, std::vector<int32_t>(a[0].tokens.begin(), stop_at + 1));
    EXPECT_EQ(d[0].reason, FinishReason::kStop);
    EXPECT_EQ(c[0].tokens, d[0].tokens);
    size_t agree = 0, total = 0;
    for (size_t i = 1; i < prompts.size(); ++i) {
      EXPECT_EQ(d[i].tokens.size(), 24u) << "prompt " << i;
      size_t same = 0;
      while (same < c[i].tokens.size() && same < d[i].tokens.size() &&
             c[i].tokens[same] == d[i].tokens[same])
        ++same;
      agree += same;
      total += c[i].tokens.size();
    }
    std::printf(
        "async scheduling (%s), after a stop and beside a penalty: %zu of %zu tokens "
        "as in synchronous steps\n",
        graphs ? "graphs" : "eager", agree, total);
    EXPECT_GE(agree, total * 9 / 10);
  }
}

// With a pool too small for every sequence at once, the newest is preempted and recomputed;
// its tokens are those of the run without preemption.
TEST(CudaEngineSingle, PreemptionGivesTheSameTokens) {
  L2KV_SKIP_WITHOUT_GPU();
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 6; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < 40 + 9 * i; ++t) p.push_back((t * 31 + i * 97 + 5) % 512);
    prompts.push_back(p);
  }
  // Blocks of 16 in both runs, so the pool's size is the only difference.
  EngineConfig roomy_config = config_with(2048, 129);
  roomy_config.block_size = 16;
  auto roomy = make_engine("llama3-gqa", DecodeKernel::kSplit, "auto", true, roomy_config);
  const auto expected = generate(*roomy, prompts, greedy(48));
  EngineConfig tight_config = config_with(2048, 24, 23 * 16);
  tight_config.block_size = 16;  // 23 usable blocks: too few for all six at once
  auto tight = make_engine("llama3-gqa", DecodeKernel::kSplit, "auto", true, tight_config);
  const auto got = generate(*tight, prompts, greedy(48));
  EXPECT_GT(tight->stats().preemptions, 0);
  // A preempted sequence is recomputed by the prefill kernel, whose rounding differs from the
  // decode steps' it replaces: on these random models (top-2 gaps down to 5e-4) a near-tie
  // may flip late. The CPU backend, which rounds the same both ways, checks exact equality.
  size_t agree = 0, total = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    size_t same = 0;
    while (same < got[i].size() && got[i][same] == expected[i][same]) ++same;
    agree += same;
    total += expected[i].size();
    EXPECT_EQ(got[i].size(), expected[i].size());
  }
  std::printf("preemptions: %lld; tokens agreeing with the run without preemption: %zu of %zu\n",
              static_cast<long long>(tight->stats().preemptions), agree, total);
  EXPECT_GE(agree, total * 9 / 10);
}

// Prefix caching on the CUDA runner: a second wave of prompts (the same ones, prefixes of them
// with new tails, and n = 3 choices sharing one prefill) starts its prefill after the cached or
// shared blocks, at a position inside the prompt. Its greedy tokens are those of an engine
// without caching (the same kernels; only near-ties may flip, as in the preemption test).
TEST(CudaEngineSingle, PrefixCacheHitsAndSharedPrefillsKeepTheGreedyTokens) {
  L2KV_SKIP_WITHOUT_GPU();
  std::vector<std::vector<int32_t>> first;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p;
    for (int t = 0; t < 70 + 23 * i; ++t) p.push_back((t * 37 + i * 89 + 11) % 512);
    first.push_back(p);
  }
  std::vector<std::vector<int32_t>> second = first;
  for (int i = 0; i < 4; ++i) {
    std::vector<int32_t> p(first[i].begin(), first[i].begin() + 40 + 5 * i);  // mid-block cut
    for (int t = 0; t < 9; ++t) p.push_back((t * 13 + i * 7 + 400) % 512);
    second.push_back(p);
  }
  auto run = [&](bool caching) {
    EngineConfig c = config_with(2048, 129);
    c.enable_prefix_caching = caching;
    auto engine = make_engine("llama3-gqa", DecodeKernel::kSplit, "auto", true, c);
    generate(*engine, first, greedy(24));
    auto out = generate(*engine, second, greedy(24));
    // n = 3 on the longest prompt: the two later choices start on the first one's blocks.
    std::vector<std::vector<int32_t>> group(3);
    int64_t leader = -1;
    for (size_t j = 0; j < group.size(); ++j) {
      GenerationRequest r;
      r.prompt = first[3];
      r.params = greedy(24);
      r.share_prompt_with = leader;
      auto* into = &group[j];
      r.on_output = [into](const RequestOutput& o) {
        into->insert(into->end(), o.new_tokens.begin(), o.new_tokens.end());
        EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
      };
      const int64_t id = engine->add_request(std::move(r));
      if (j == 0) leader = id;
    }
    engine->run_until_idle();
    out.insert(out.end(), group.begin(), group.end());
    const EngineStats st = engine->stats();
    EXPECT_EQ(st.kv_blocks_free, st.kv_blocks_total) << "KV blocks leaked";
    std::printf("prefix caching %s: %lld of %lld prompt tokens hit, %lld prompt tokens run\n",
                caching ? "on" : "off", static_cast<long long>(st.prefix_cache_hits),
                static_cast<long long>(st.prefix_cache_queries),
                static_cast<long long>(st.prompt_tokens));
    if (caching) {
      EXPECT_GT(st.prefix_cache_hits, 0);
    }
    return std::make_pair(out, st);
  };
  const auto [on, on_stats] = run(true);
  const auto [off, off_stats] = run(false);
  EXPECT_LT(on_stats.prompt_tokens, off_stats.prompt_tokens);
  size_t agree = 0, total = 0;
  for (size_t i = 0; i < off.size(); ++i) {
    size_t same = 0;
    while (same < on[i].size() && same < off[i].size() && on[i][same] == off[i][same]) ++same;
    agree += same;
    total += off[i].size();
    EXPECT_EQ(on[i].size(), 24u);
  }
  std::printf("caching on and off agree on %zu of %zu tokens\n", agree, total);
  EXPECT_GE(agree, total * 9 / 10);
}

// The same seeded request gives the same tokens alone and among other requests.
TEST(CudaEngineSingle, SeededSamplingIgnoresTheRestOfTheBatch) {
  L2KV_SKIP_WITHOUT_GPU();
  auto engine =
      make_engine("qwen2-tied", DecodeKernel::kSplit, "auto", true, config_with(2048, 129));
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_p = 0.9f;
  p.top_k = 50;
  p.max_tokens = 24;
  p.ignore_eos = true;
  p.seed = 1234;
  const std::vector<int32_t> prompt = {5, 17, 99, 240, 3, 77};
  const auto alone = generate(*engine, {prompt}, p);
  std::vector<std::vector<int32_t>> crowd = {{1, 2, 3}, prompt, {400, 401}, {9, 9, 9, 9}};
  SamplingParams others = p;
  const auto together = generate(*engine, crowd, others);
  EXPECT_EQ(together[1], alone[0]);
  EXPECT_EQ(alone[0].size(), 24u);
}

// min_tokens on the GPU path: the request's stop token is masked out of its first min_tokens
// tokens (the allowed-token mask applied to its logits row), so greedy follows the reference up
// to where the stop token stood and then takes another token; a request in the same steps
// without min_tokens stops at that token as before.
TEST(CudaEngineSingle, MinTokensHoldsBackStopTokensOfItsOwnRow) {
  L2KV_SKIP_WITHOUT_GPU();
  auto engine =
      make_engine("qwen2-tied", DecodeKernel::kSplit, "auto", true, config_with(2048, 129));
  const std::vector<int32_t> prompt = {5, 17, 99, 240, 3, 77};
  const auto reference = generate(*engine, {prompt}, greedy(24))[0];
  ASSERT_EQ(reference.size(), 24u);
  const int32_t stop = reference[6];
  const auto at =
      static_cast<int>(std::find(reference.begin(), reference.end(), stop) - reference.begin());
  SamplingParams plain = greedy(24);
  plain.stop_token_ids = {stop};
  SamplingParams held = plain;
  held.min_tokens = at + 2;
  const auto outputs = generate(*engine, {prompt, prompt}, {held, plain});
  EXPECT_EQ(outputs[1], std::vector<int32_t>(reference.begin(), reference.begin() + at + 1));
  ASSERT_GE(outputs[0].size(), static_cast<size_t>(held.min_tokens));
  EXPECT_EQ(std::vector<int32_t>(outputs[0].begin(), outputs[0].begin() + at),
            std::vector<int32_t>(reference.begin(), reference.begin() + at));
  for (int i = 0; i < held.min_tokens; ++i)
    EXPECT_NE(outputs[0][i], stop) << "the stop token at " << i << ", before min_tokens";
}

// Structured outputs on the GPU path: constrained rows (their masks applied to the logits by
// apply_token_bitmask) end with EOS on a text of their regex, and the unconstrained rows of the
// same steps get the tokens they get alone.
TEST(CudaEngineSingle, ConstrainedRowsFollowTheirGrammar) {
  L2KV_SKIP_WITHOUT_GPU();
  auto engine =
      make_engine("llama3-gqa", DecodeKernel::kSplit, "auto", true, config_with(2048, 129));
  const ModelConfig& config = engine->runner().config();
  std::vector<std::string> tokens(static_cast<size_t>(config.vocab_size));
  for (int c = 0x20; c < 0x7F; ++c)
    tokens[static_cast<size_t>(c)] = std::string(1, static_cast<char>(c));
  size_t next = 300;
  for (const char* t : {"12", "ab", "c-", "-a", "999"}) tokens[next++] = t;
  const int32_t eos = config.eos_token_ids.front();
  tokens[static_cast<size_t>(eos)].clear();
  auto vocab = std::make_shared<structured::TokenVocabulary>(tokens, std::vector<int32_t>{eos});
  const std::string pattern = "[0-9]{3}-[a-c]{1,6}";
  auto grammar =
      std::make_shared<structured::CompiledGrammar>(structured::regex_grammar(pattern), vocab);

  SamplingParams free = greedy(12);
  free.ignore_eos = true;
  const std::vector<int32_t> free_prompt = {5, 17, 99, 240};
  const auto alone = generate(*engine, {free_prompt}, free);

  std::vector<RequestOutput> outputs(4);
  std::vector<std::vector<int32_t>> produced(4);
  for (size_t i = 0; i < 4; ++i) {
    GenerationRequest r;
    r.prompt = i == 1 ? free_prompt : std::vector<int32_t>{1, static_cast<int32_t>(40 + i)};
    r.params = i == 1 ? free : SamplingParams{};
    if (i != 1) {
      r.params.temperature = 1.f;
      r.params.seed = 10 + i;
      r.params.max_tokens = 64;
      r.grammar = grammar;
    }
    r.on_output = [&, i](const RequestOutput& o) {
      produced[i].insert(produced[i].end(), o.new_tokens.begin(), o.new_tokens.end());
      outputs[i] = o;
    };
    engine->add_request(std::move(r));
  }
  engine->run_until_idle();
  EXPECT_EQ(produced[1], alone[0]);
  for (size_t i : {0u, 2u, 3u}) {
    EXPECT_EQ(outputs[i].finish_reason, FinishReason::kStop) << i;
    std::string text;
    for (int32_t t : produced[i])
      if (t != eos) text += vocab->bytes(t);
    EXPECT_TRUE(structured::grammar_matches(grammar->grammar(), text)) << i << ": " << text;
  }
}

// Runs requests, then a kernel that writes to an unmapped address on the runner's stream (a
// sticky error), then two more requests; returns how many checks failed.
int lose_the_device() {
  CudaRunner* cuda_runner = nullptr;
  auto engine = make_engine("llama3-gqa", DecodeKernel::kSplit, "auto", true,
                            config_with(2048, 129), &cuda_runner);
  CudaRunner& runner = *cuda_runner;
  const std::vector<std::vector<int32_t>> prompts = {{1, 2, 3, 4}, {5, 6, 7}};
  int problems = 0;
  if (!runner.device_fault().empty()) ++problems;  // healthy: no fault
  if (generate(*engine, prompts, greedy(4))[0].size() != 4u) ++problems;
  try {
    fill_random(reinterpret_cast<void*>(uintptr_t{1} << 12), int64_t{1} << 24, DType::kBFloat16,
                1.f, 1, runner.stream());
  } catch (const Error&) {  // the fault may already show at the launch check
  }
  std::vector<RequestOutput> last(2);
  for (size_t i = 0; i < 2; ++i) {
    GenerationRequest r;
    r.prompt = prompts[i];
    r.params = greedy(8);
    r.on_output = [&last, i](const RequestOutput& o) { last[i] = o; };
    engine->add_request(std::move(r));
  }
  engine->run_until_idle();
  const std::string failure = engine->failure();
  std::fprintf(stderr, "engine failure: %s\n", failure.c_str());
  if (failure.find("the device is lost: CUDA error") == std::string::npos) ++problems;
  for (const RequestOutput& o : last)
    if (!o.finished || o.finish_reason != FinishReason::kError || o.error != failure) ++problems;
  const EngineStats st = engine->stats();
  if (st.kv_blocks_free != st.kv_blocks_total) ++problems;
  try {
    GenerationRequest late;
    late.prompt = prompts[0];
    late.params = greedy(2);
    engine->add_request(std::move(late));
    ++problems;  // accepted after the device was lost
  } catch (const Error&) {
  }
  std::fprintf(stderr, "problems: %d\n", problems);
  (void)engine.release();  // not destroyed in the lost context: the child process exits now
  return problems;
}

// The runner's warm-up forward at start (one prompt-sized step on block 0, so the first request
// does not pay for the prefill kernels' first launches) must not take the place of the first
// prompt for an fp8 cache whose scales are calculated from it: after allocate_kv_cache the
// calculation is still pending and every scale is back at 1 (a warm-up that kept its own would
// leave them at token 0's K and V).
TEST(CudaEngineSingle, WarmUpLeavesTheFp8KvScalesToTheFirstPrompt) {
  L2KV_SKIP_WITHOUT_GPU();
  auto model = std::make_shared<CudaModel>(kFixtures / "llama3-gqa");
  ASSERT_TRUE(model->missing_checkpoint_kv_scales()) << "the fixture must lack k_scale/v_scale";
  CudaRunnerOptions options;
  options.kv_storage = KvStorage::kFp8E4M3;
  CudaRunner runner(model, options);
  runner.prepare(16, 256, 4, 512, 0.9);
  ASSERT_TRUE(runner.step_state().kv_scales_pending());
  runner.allocate_kv_cache(64);
  EXPECT_TRUE(runner.step_state().kv_scales_pending());
  const std::vector<float> scales = runner.step_state().kv_scales();
  ASSERT_EQ(scales.size(), static_cast<size_t>(2 * model->config().num_layers));
  for (size_t i = 0; i < scales.size(); ++i) EXPECT_EQ(scales[i], 1.f) << "scale " << i;
}

// A sticky CUDA error makes CudaRunner::device_fault() report it and the engine stop: the
// requests end with the reason and new ones are refused. The context is unusable afterwards,
// so this runs in a child process (a threadsafe death test re-runs the binary).
TEST(CudaEngineDeathTest, StickyErrorLosesTheDeviceAndStopsTheEngine) {
  L2KV_SKIP_WITHOUT_GPU();
  ::testing::GTEST_FLAG(death_test_style) = "threadsafe";
  EXPECT_EXIT(std::_Exit(lose_the_device() == 0 ? 0 : 1), ::testing::ExitedWithCode(0),
              "engine failure: the device is lost: CUDA error");
}

}  // namespace
}  // namespace l2kv
