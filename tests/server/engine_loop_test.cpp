// The server's engine thread on the CPU backend: submissions from several threads get the
// engine's greedy tokens, refused requests come back as 400, aborts free the KV blocks at once,
// and shutdown aborts what is in flight.
#include "l2kv/server/engine_loop.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "l2kv/engine/cpu_runner.h"
#include "l2kv/model/cpu_model.h"
#include "l2kv/server/openai_protocol.h"

namespace l2kv::server {
namespace {

namespace fs = std::filesystem;
const fs::path kFixture = fs::path(L2KV_TEST_SOURCE_DIR) / "model" / "fixtures" / "llama3-gqa";

struct Reference {
  std::vector<int32_t> prompt, greedy;
};

std::vector<Reference> references() {
  std::ifstream in(kFixture / "reference.json");
  const auto j = nlohmann::json::parse(in);
  std::vector<Reference> out;
  for (const auto& c : j["cases"])
    out.push_back(
        {c["prompt"].get<std::vector<int32_t>>(), c["greedy"].get<std::vector<int32_t>>()});
  return out;
}

std::unique_ptr<EngineLoop> make_loop(Metrics* metrics) {
  return std::make_unique<EngineLoop>(
      [] {
        EngineConfig c;
        c.max_model_len = 256;
        c.num_kv_blocks = 64;
        return std::make_unique<Engine>(
            std::make_unique<CpuRunner>(std::make_shared<const CpuModel>(kFixture)), nullptr, c);
      },
      metrics);
}

GenerationRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.params.temperature = 0;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  return r;
}

// Reads a channel to the end; returns each choice's tokens and last output.
std::vector<ChoiceOutput> drain(OutputChannel& channel, size_t choices) {
  std::vector<ChoiceOutput> out(choices);
  std::vector<OutputChannel::Item> items;
  bool done = false;
  while (!done) {
    items.clear();
    done = channel.pop(items, std::chrono::milliseconds(100));
    for (const auto& item : items) out[static_cast<size_t>(item.choice)].append(item.output);
  }
  return out;
}

TEST(EngineLoop, ConcurrentSubmissionsMatchGreedyReferences) {
  Metrics metrics("m");
  auto loop = make_loop(&metrics);
  const auto refs = references();
  std::vector<std::thread> threads;
  std::vector<std::vector<int32_t>> got(refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    threads.emplace_back([&, i] {
      const auto max = static_cast<int32_t>(refs[i].greedy.size());
      std::vector<GenerationRequest> group;
      group.push_back(greedy(refs[i].prompt, max));
      group.push_back(greedy(refs[i].prompt, max));  // n = 2: both greedy, both equal
      auto s = loop->submit(std::move(group));
      const auto choices = drain(*s.channel, 2);
      EXPECT_EQ(choices[0].tokens, choices[1].tokens);
      EXPECT_EQ(choices[0].finish_reason, FinishReason::kLength);
      got[i] = choices[0].tokens;
    });
  }
  for (auto& t : threads) t.join();
  for (size_t i = 0; i < refs.size(); ++i) EXPECT_EQ(got[i], refs[i].greedy) << "case " << i;
  // The snapshot is taken after the step that delivered the last outputs: wait for it.
  LoopSnapshot s = loop->snapshot();
  for (int i = 0; i < 200 && s.requests_in_flight != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    s = loop->snapshot();
  }
  EXPECT_EQ(s.engine.kv_blocks_free, s.engine.kv_blocks_total);
  EXPECT_EQ(s.requests_in_flight, 0);
  const std::string text = metrics.render({});
  EXPECT_NE(text.find("finished_reason=\"length\"} " + std::to_string(2 * refs.size())),
            std::string::npos)
      << text;
}

TEST(EngineLoop, RefusedRequestIsBadRequest) {
  auto loop = make_loop(nullptr);
  std::vector<GenerationRequest> group;
  group.push_back(greedy({1, 2, 3}, 4));
  group.push_back(greedy({1, 2, 3}, 4));
  group[1].prompt = {};  // empty prompt: the engine refuses; the whole group is dropped
  try {
    loop->submit(std::move(group));
    FAIL() << "no error";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
  }
  const LoopSnapshot s = loop->snapshot();
  EXPECT_EQ(s.engine.kv_blocks_free, s.engine.kv_blocks_total);
}

TEST(EngineLoop, AbortFreesBlocksAndShutdownAbortsInFlight) {
  auto loop = make_loop(nullptr);
  std::vector<GenerationRequest> group;
  group.push_back(greedy({1, 2, 3, 4, 5}, 200));
  auto s = loop->submit(std::move(group));
  std::vector<OutputChannel::Item> items;
  while (items.empty()) s.channel->pop(items, std::chrono::milliseconds(100));
  loop->abort(s.request_ids);
  const auto choices = drain(*s.channel, 1);
  EXPECT_EQ(choices[0].finish_reason, FinishReason::kAbort);
  for (int i = 0;
       i < 100 && loop->snapshot().engine.kv_blocks_free != loop->snapshot().engine.kv_blocks_total;
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(loop->snapshot().engine.kv_blocks_free, loop->snapshot().engine.kv_blocks_total);

  std::vector<GenerationRequest> second;
  second.push_back(greedy({1, 2, 3}, 200));
  auto t = loop->submit(std::move(second));
  loop->shutdown();
  EXPECT_EQ(drain(*t.channel, 1)[0].finish_reason, FinishReason::kAbort);
  std::vector<GenerationRequest> late;
  late.push_back(greedy({1, 2}, 2));
  try {
    loop->submit(std::move(late));
    FAIL() << "accepted after shutdown";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 503);
  }
}

}  // namespace
}  // namespace l2kv::server
