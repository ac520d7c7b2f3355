// The schema suite (tests/structured/schemas.json): every schema compiles, and the engine on a
// CPU fixture with random weights, sampling at temperature 1 under the grammar's masks alone,
// ends each output with EOS on a complete JSON text. With L2KV_SCHEMA_SUITE_OUT set, the
// outputs go there as JSON lines ({"name", "output"}) for the independent validator
// (tests/structured/validator, ajv; scripts/schema_suite_test.sh runs both).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "l2kv/engine/cpu_runner.h"
#include "l2kv/engine/engine.h"
#include "l2kv/structured/grammar_matcher.h"
#include "l2kv/structured/json_schema.h"

namespace l2kv::structured {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

const fs::path kTests = fs::path(L2KV_TEST_SOURCE_DIR);

// The fixture's 512 ids spelled as a small JSON-minded vocabulary: every printable ASCII
// character, newline and tab, the bytes of a few non-ASCII characters (alone and whole),
// then multi-character pieces of JSON. Id 2 is the fixture's EOS; 0 and 1 spell nothing.
std::shared_ptr<const TokenVocabulary> suite_vocabulary(int64_t vocab_size, int32_t eos) {
  std::vector<std::string> tokens(static_cast<size_t>(vocab_size));
  size_t next = 3;
  auto add = [&](const std::string& t) {
    if (next < tokens.size()) tokens[next++] = t;
  };
  for (int c = 0x20; c < 0x7F; ++c) add(std::string(1, static_cast<char>(c)));
  add("\n");
  add("\t");
  for (const char* t : {"\xC3", "\xA9", "\xC3\xA9", "\xE2\x82\xAC", "\xE5\x90\x8D", "\xE5\x89\x8D",
                        "\xE2", "\x82", "\xAC"})
    add(t);
  for (const char* t :
       {"{\"",   "\":",  "\": ", "\",",     "\", \"",  "\"}",    "\"]",   "[\"",  "true",
        "false", "null", ", ",   ",\"",     "}",       "},",     "}]",    "[{",   "[]",
        "{}",    "\\n",  "\\\"", "\\u00e9", "00",      "12",     "2024",  "-0",   "0.",
        ".5",    "e1",   "E-",   "name",    "id",      "type",   "value", "the ", "and",
        "ing",   "tion", " a",   " the",    "er",      "on",     "an",    "re",   "@",
        ".com",  "-01",  "T1",   ":00",     "Z",       "+01:00", "abc",   "ff",   "0a",
        "192",   "168",  "255",  "INV-",    "circle",  "square", "Point", "yes",  "no",
        "high",  "low",  "info", "error",   "celsius", "USD",    "EUR"})
    add(t);
  return std::make_shared<TokenVocabulary>(std::move(tokens), std::vector<int32_t>{eos});
}

struct Outcome {
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kNone;
  std::string error;
};

TEST(SchemaSuite, EveryOutputIsCompleteJsonUnderItsSchemasGrammar) {
  std::ifstream in(kTests / "structured" / "schemas.json");
  ASSERT_TRUE(in) << "tests/structured/schemas.json is missing";
  const json suite = json::parse(in);
  const json& schemas = suite.at("schemas");
  ASSERT_GE(schemas.size(), 100u);

  auto model = std::make_shared<const CpuModel>(kTests / "model" / "fixtures" / "llama3-hd128");
  const ModelConfig& config = model->config();
  ASSERT_FALSE(config.eos_token_ids.empty());
  const auto vocab = suite_vocabulary(config.vocab_size, config.eos_token_ids.front());
  EngineConfig engine_config;
  engine_config.max_model_len = 2048;
  engine_config.max_num_seqs = 32;
  engine_config.seed = 20;
  Engine engine(std::make_unique<CpuRunner>(model), nullptr, engine_config);

  std::vector<Outcome> outcomes(schemas.size());
  for (size_t k = 0; k < schemas.size(); ++k) {
    const std::string name = schemas[k].at("name").get<std::string>();
    Grammar grammar;
    try {
      grammar = json_schema_grammar(schemas[k].at("schema"));
    } catch (const std::exception& e) {
      ADD_FAILURE() << name << ": " << e.what();
      continue;
    }
    GenerationRequest r;
    r.prompt = {1, static_cast<int32_t>(10 + k % 90), static_cast<int32_t>(100 + k % 50)};
    r.params.temperature = 1.f;
    r.params.seed = 1000 + k;
    r.params.max_tokens = 2000;
    r.grammar = std::make_shared<CompiledGrammar>(std::move(grammar), vocab);
    Outcome& o = outcomes[k];
    r.on_output = [&o](const RequestOutput& out) {
      o.tokens.insert(o.tokens.end(), out.new_tokens.begin(), out.new_tokens.end());
      if (out.finished) o.finish = out.finish_reason, o.error = out.error;
    };
    engine.add_request(std::move(r));
  }
  engine.run_until_idle();

  std::ofstream out;
  if (const char* path = std::getenv("L2KV_SCHEMA_SUITE_OUT")) {
    fs::create_directories(fs::path(path).parent_path());
    out.open(path);
    ASSERT_TRUE(out) << "cannot write " << path;
  }
  int64_t total_tokens = 0;
  for (size_t k = 0; k < schemas.size(); ++k) {
    const std::string name = schemas[k].at("name").get<std::string>();
    const Outcome& o = outcomes[k];
    std::string text;
    for (int32_t t : o.tokens)
      if (!vocab->is_eos(t)) text += vocab->bytes(t);
    total_tokens += static_cast<int64_t>(o.tokens.size());
    EXPECT_EQ(o.finish, FinishReason::kStop)
        << name << " ended with " << finish_reason_name(o.finish) << " " << o.error << " after "
        << o.tokens.size() << " tokens: " << text.substr(0, 300);
    EXPECT_TRUE(!o.tokens.empty() && vocab->is_eos(o.tokens.back())) << name;
    EXPECT_TRUE(json::accept(text)) << name << ": not JSON: " << text;
    if (out.is_open())
      out << json({{"name", name}, {"output", text}})
                 .dump(-1, ' ', false, json::error_handler_t::replace)
          << "\n";
  }
  std::printf("[ schema suite ] %zu schemas, %lld tokens generated\n", schemas.size(),
              static_cast<long long>(total_tokens));
}

}  // namespace
}  // namespace l2kv::structured
