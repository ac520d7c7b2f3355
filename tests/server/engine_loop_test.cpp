// The server's engine thread on the CPU backend: submissions from several threads get the
// engine's greedy tokens, refused requests come back as 400, aborts free the KV blocks at once,
// and shutdown aborts what is in flight.
#include "l2kv/server/engine_loop.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "l2kv/core/error.h"
#include "l2kv/engine/cpu_runner.h"
#include "l2kv/model/cpu_model.h"
#include "l2kv/server/openai_protocol.h"
#include "l2kv/tokenizer/tokenizer.h"

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
        c.max_num_seqs = 8;
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
      auto s = loop->submit(std::move(group), nullptr);
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
  // Each group's prompt counts once, as vLLM counts a request of n choices.
  size_t prompt_tokens = 0;
  for (const auto& r : refs) prompt_tokens += r.prompt.size();
  EXPECT_NE(text.find("l2kv:prompt_tokens_total{model_name=\"m\"} " +
                      std::to_string(prompt_tokens) + "\n"),
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
    loop->submit(std::move(group), nullptr);
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
  auto s = loop->submit(std::move(group), nullptr);
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
  auto t = loop->submit(std::move(second), nullptr);
  loop->shutdown();
  EXPECT_EQ(drain(*t.channel, 1)[0].finish_reason, FinishReason::kAbort);
  std::vector<GenerationRequest> late;
  late.push_back(greedy({1, 2}, 2));
  try {
    loop->submit(std::move(late), nullptr);
    FAIL() << "accepted after shutdown";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 503);
  }
}

// Each id of the fixture's 512 its own text, "<id>", so a stop string can span tokens.
std::string bracketed(int32_t id) {
  std::string s(1, '<');
  s += std::to_string(id);
  s += '>';
  return s;
}

// That tokenizer without `missing` (it decodes to nothing; -1: none missing).
const Tokenizer& tokenizer_without(int32_t missing) {
  static std::map<int32_t, Tokenizer> made;
  if (const auto it = made.find(missing); it != made.end()) return it->second;
  nlohmann::json vocab = nlohmann::json::object();
  for (int32_t id = 0; id < 512; ++id)
    if (id != missing) vocab[bracketed(id)] = id;
  const nlohmann::json spec = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  return made.emplace(missing, Tokenizer::from_json(spec.dump())).first->second;
}
const Tokenizer& bracket_tokenizer() {
  return tokenizer_without(-1);
}

// Waits until the engine has run a step after `steps_before` and has nothing in flight (the
// snapshot is taken after each loop turn, so right after a submit it may still say 0).
void wait_idle(EngineLoop& loop, int64_t steps_before) {
  for (int i = 0; i < 1000; ++i) {
    const LoopSnapshot s = loop.snapshot();
    if (s.engine.steps > steps_before && s.requests_in_flight == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  FAIL() << "the loop did not become idle";
}

// Stop strings are applied by the loop's output thread: the choice ends at the token that
// completed the stop string, with that count of tokens, and the engine's request is aborted
// there (it does not run on to max_tokens), also when nobody reads the channel until the
// engine is idle; the other choice of the group, without stop strings, is untouched; /metrics
// counts what the clients got: each end once with its reason ("stop" also for a stop string
// completed by the max_tokens-th token, the engine's "length"; "error" for a token the
// tokenizer cannot decode; no "abort" for the requests a stop string ended), and the generated
// tokens the clients were sent. A stop string without a tokenizer is a 400.
TEST(EngineLoop, StopStringsEndTheChoiceOnTheOutputThread) {
  Metrics metrics("m");
  auto loop = make_loop(&metrics);
  const Reference ref = references()[0];
  const auto max = static_cast<int32_t>(ref.greedy.size());
  // From the end of token 4's text into token 5's.
  const std::string stop =
      bracketed(ref.greedy[4]).substr(1) + bracketed(ref.greedy[5]).substr(0, 2);
  std::string before;
  for (int i = 0; i < 4; ++i) before += bracketed(ref.greedy[i]);
  before += '<';
  const auto sample = [&](const std::string& key) {
    const std::string text = metrics.render({});
    const size_t at = text.find(key);
    return at == std::string::npos ? -1 : std::stoi(text.substr(at + key.size()));
  };
  const auto count = [&](const char* reason) {
    return sample(std::string("finished_reason=\"") + reason + "\"} ");
  };
  const auto generated = [&] { return sample("l2kv:generation_tokens_total{model_name=\"m\"} "); };

  std::vector<GenerationRequest> group;
  group.push_back(greedy(ref.prompt, max));
  group.push_back(greedy(ref.prompt, max));
  group[0].params.stop = {stop};
  int64_t steps = loop->snapshot().engine.steps;
  auto s = loop->submit(std::move(group), &bracket_tokenizer());
  auto choices = drain(*s.channel, 2);
  EXPECT_EQ(choices[0].tokens, std::vector<int32_t>(ref.greedy.begin(), ref.greedy.begin() + 6));
  EXPECT_EQ(choices[0].text, before);
  EXPECT_EQ(choices[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(choices[0].stop_reason, stop);
  EXPECT_EQ(choices[0].completion_tokens, 6);
  EXPECT_EQ(choices[1].tokens, ref.greedy);
  EXPECT_EQ(choices[1].finish_reason, FinishReason::kLength);
  wait_idle(*loop, steps);
  LoopSnapshot snapshot = loop->snapshot();
  EXPECT_EQ(snapshot.engine.kv_blocks_free, snapshot.engine.kv_blocks_total);
  EXPECT_LT(snapshot.engine.generation_tokens, 2 * max)
      << "the stopped request ran on to max_tokens: it was not aborted";
  EXPECT_EQ(count("stop"), 1);
  EXPECT_EQ(count("length"), 1);
  EXPECT_EQ(count("abort"), 0);
  EXPECT_EQ(generated(), 6 + max);

  // Nobody reads the channel until the engine is idle: the stop is still applied at once.
  group.clear();
  group.push_back(greedy(ref.prompt, max));
  group[0].params.stop = {stop};
  steps = loop->snapshot().engine.steps;
  const int64_t generated_before = loop->snapshot().engine.generation_tokens;
  s = loop->submit(std::move(group), &bracket_tokenizer());
  wait_idle(*loop, steps);
  EXPECT_LT(loop->snapshot().engine.generation_tokens - generated_before, max)
      << "the stopped request ran on to max_tokens while nobody read its channel";
  choices = drain(*s.channel, 1);
  EXPECT_EQ(choices[0].tokens, std::vector<int32_t>(ref.greedy.begin(), ref.greedy.begin() + 6));
  EXPECT_EQ(choices[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(count("stop"), 2);
  EXPECT_EQ(count("abort"), 0);
  EXPECT_EQ(generated(), 2 * 6 + max);

  // The stop string completed by the last token max_tokens allows.
  group.clear();
  group.push_back(greedy(ref.prompt, 6));
  group[0].params.stop = {stop};
  steps = loop->snapshot().engine.steps;
  s = loop->submit(std::move(group), &bracket_tokenizer());
  choices = drain(*s.channel, 1);
  EXPECT_EQ(choices[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(choices[0].completion_tokens, 6);
  wait_idle(*loop, steps);
  EXPECT_EQ(count("stop"), 3);
  EXPECT_EQ(count("length"), 1);

  // A tokenizer without token 3's id (a model row past its vocabulary): that token adds no text
  // and the output goes on to max_tokens.
  group.clear();
  group.push_back(greedy(ref.prompt, max));
  steps = loop->snapshot().engine.steps;
  s = loop->submit(std::move(group), &tokenizer_without(ref.greedy[3]));
  choices = drain(*s.channel, 1);
  EXPECT_EQ(choices[0].finish_reason, FinishReason::kLength);
  EXPECT_EQ(choices[0].completion_tokens, max);
  wait_idle(*loop, steps);
  EXPECT_EQ(count("error"), 0);
  EXPECT_EQ(count("length"), 2);
  EXPECT_EQ(count("stop"), 3);
  EXPECT_EQ(count("abort"), 0);
  snapshot = loop->snapshot();
  EXPECT_EQ(snapshot.engine.kv_blocks_free, snapshot.engine.kv_blocks_total);

  std::vector<GenerationRequest> no_tokenizer;
  no_tokenizer.push_back(greedy(ref.prompt, 4));
  no_tokenizer[0].params.stop = {"x"};
  try {
    loop->submit(std::move(no_tokenizer), nullptr);
    FAIL() << "stop strings without a tokenizer were taken";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    EXPECT_NE(e.message.find("tokenizer"), std::string::npos) << e.message;
  }
}

// A CPU runner with a fault injected from one execute() call on: a lost device (every call
// throws, device_fault() reports a sticky error) or an exception that is no std::exception,
// which nothing in the engine catches and which ends the engine thread.
class FaultyRunner : public ModelRunner {
 public:
  enum class Fault { kLostDevice, kThreadDeath };
  FaultyRunner(Fault fault, int at)
      : inner_(std::make_shared<const CpuModel>(kFixture)), fault_(fault), at_(at) {}
  const ModelConfig& config() const override { return inner_.config(); }
  std::string device_name() const override { return "cpu (faulty)"; }
  KvCacheSizing prepare(int32_t a, int32_t b, int32_t c, int32_t d, double e) override {
    return inner_.prepare(a, b, c, d, e);
  }
  void allocate_kv_cache(int32_t n) override { inner_.allocate_kv_cache(n); }
  std::vector<SampledToken> execute(const StepInput& step) override {
    if (++calls_ >= at_) {
      if (fault_ == Fault::kThreadDeath) throw 42;
      throw Error("CUDA error cudaErrorIllegalAddress (simulated)");
    }
    return inner_.execute(step);
  }
  std::string device_fault() override {
    return fault_ == Fault::kLostDevice && calls_ >= at_ ? "simulated sticky error" : "";
  }

 private:
  CpuRunner inner_;
  Fault fault_;
  int at_;
  int calls_ = 0;
};

std::unique_ptr<EngineLoop> make_faulty_loop(FaultyRunner::Fault fault, int at,
                                             Metrics* metrics = nullptr) {
  return std::make_unique<EngineLoop>(
      [fault, at] {
        EngineConfig c;
        c.max_model_len = 256;
        c.num_kv_blocks = 64;
        c.max_num_seqs = 8;
        return std::make_unique<Engine>(std::make_unique<FaultyRunner>(fault, at), nullptr, c);
      },
      metrics);
}

// After the fault: the request in flight ends with an error naming it, failure() says why,
// and a new submission is answered 503 with the reason at once (not queued forever).
void expect_unavailable_after_fault(EngineLoop& loop, const std::string& reason) {
  std::vector<GenerationRequest> group;
  group.push_back(greedy({1, 2, 3, 4, 5}, 50));
  auto s = loop.submit(std::move(group), nullptr);
  const auto choices = drain(*s.channel, 1);
  EXPECT_EQ(choices[0].finish_reason, FinishReason::kError);
  EXPECT_NE(choices[0].error.find(reason), std::string::npos) << choices[0].error;
  std::string failure;
  for (int i = 0; i < 200 && (failure = loop.failure()).empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_NE(failure.find(reason), std::string::npos) << failure;
  std::vector<GenerationRequest> late;
  late.push_back(greedy({1, 2}, 2));
  try {
    loop.submit(std::move(late), nullptr);
    FAIL() << "accepted after the engine failed";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 503);
    EXPECT_NE(e.message.find(reason), std::string::npos) << e.message;
  }
}

TEST(EngineLoop, LostDeviceMakesTheLoopUnavailable) {
  auto loop = make_faulty_loop(FaultyRunner::Fault::kLostDevice, 3);
  EXPECT_EQ(loop->failure(), "");
  expect_unavailable_after_fault(*loop, "simulated sticky error");
  // The snapshot is taken at the end of the loop turn that failed: wait for it.
  LoopSnapshot s = loop->snapshot();
  for (int i = 0; i < 200 && s.requests_in_flight != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    s = loop->snapshot();
  }
  EXPECT_EQ(s.engine.kv_blocks_free, s.engine.kv_blocks_total);
  EXPECT_EQ(s.requests_in_flight, 0);
  loop->shutdown();
}

TEST(EngineLoop, EngineThreadDeathMakesTheLoopUnavailable) {
  Metrics metrics("m");
  auto loop = make_faulty_loop(FaultyRunner::Fault::kThreadDeath, 2, &metrics);
  expect_unavailable_after_fault(*loop, "the engine thread stopped");
  loop->shutdown();
  // The request it failed counted once, as its client saw it end.
  const std::string text = metrics.render({});
  EXPECT_NE(text.find("finished_reason=\"error\"} 1"), std::string::npos) << text;
}

}  // namespace
}  // namespace l2kv::server
