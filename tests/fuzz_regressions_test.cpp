// Replays every input the fuzz targets (fuzz/) found crashing, hanging or tripping a sanitizer,
// through the same entry points (fuzz/fuzz_entry_points.h): each must now end in a clean
// l2kv::Error or succeed. Then the resource limits the fuzzing asked for, one by one: a
// runaway or deeply nested template, absurd safetensors headers and shapes, oversized configs
// and token ids, requests beyond max_tokens and n.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>

#include "fuzz_entry_points.h"

namespace l2kv {
namespace {

namespace fs = std::filesystem;
const fs::path kRegressions = fs::path(L2KV_TEST_SOURCE_DIR) / "fuzz_regressions";

using EntryPoint = std::function<void(const uint8_t*, size_t)>;
const std::map<std::string, EntryPoint> kTargets = {
    {"safetensors", fuzz::run_safetensors},       {"model_config", fuzz::run_model_config},
    {"tokenizer", fuzz::run_tokenizer},           {"chat_template", fuzz::run_chat_template},
    {"openai_request", fuzz::run_openai_request}, {"json_schema", fuzz::run_json_schema},
    {"tool_calls", fuzz::run_tool_calls},
};

TEST(FuzzRegressions, EveryCommittedInputEndsCleanly) {
  int replayed = 0;
  for (const auto& [target, run] : kTargets) {
    const fs::path folder = kRegressions / target;
    if (!fs::is_directory(folder)) continue;
    for (const auto& entry : fs::directory_iterator(folder)) {
      std::ifstream f(entry.path(), std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(f)),
                              std::istreambuf_iterator<char>());
      SCOPED_TRACE(entry.path().string());
      EXPECT_NO_THROW(run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
      ++replayed;
    }
  }
  EXPECT_GT(replayed, 0);
}

// Renders `source` over one user message; returns the error's text ("" when it renders).
std::string render_error(const std::string& source) {
  ChatRequest request;
  request.messages = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "hi"}])");
  try {
    ChatTemplate(source, "<s>", "</s>").render(request);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(FuzzLimits, RunawayTemplateLoopIsAnError) {
  EXPECT_NE(render_error("{% for i in range(1000000) %}{% for j in range(1000000) %}"
                         "{% endfor %}{% endfor %}")
                .find("steps"),
            std::string::npos);
  EXPECT_NE(render_error("{{ range(100000000000) }}").find("range()"), std::string::npos);
}

// Lists share their items, so forty doublings build 2^40 leaves in a few bytes; printing,
// comparing, serializing or copying such a value (or a list of one large string doubled) is
// work the render's step bound counts. Each ran for minutes or took gigabytes.
TEST(FuzzLimits, SharedValuesAreWalkedWithinTheStepBound) {
  std::string doubled = "{% set a = [1] %}";
  for (int i = 0; i < 40; ++i) doubled += "{% set a = [a, a] %}";
  for (const char* use : {"{{ a }}", "{{ a|tojson }}", "{{ a|string }}", "{{ a == a }}",
                          "{{ a ~ 'x' }}", "{{ [a]|join(',') }}", "{{ a in [a] }}"})
    EXPECT_NE(render_error(doubled + use).find("steps"), std::string::npos) << use;
  std::string strings = "{% set s = range(100000)|join('aaaaaaaaaa') %}{% set l = [s] %}";
  for (int i = 0; i < 20; ++i) strings += "{% set l = l + l %}";
  EXPECT_NE(render_error(strings).find("steps"), std::string::npos);
  std::string sets;
  for (int i = 0; i < 50000; ++i) sets += "{% set v" + std::to_string(i) + " = 1 %}";
  EXPECT_NE(render_error(sets).find("steps"), std::string::npos);
  EXPECT_EQ(render_error("{% set a = [1, [2, 3]] %}{{ a == [1, [2, 3]] }}{{ a|tojson }}"), "");
}

TEST(FuzzLimits, ExplodingStringIsAnError) {
  EXPECT_NE(render_error("{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
                         "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}")
                .find("bytes"),
            std::string::npos);
}

TEST(FuzzLimits, DeepNestingIsAnError) {
  EXPECT_NE(render_error("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}")
                .find("nesting"),
            std::string::npos);
  EXPECT_NE(render_error(std::string(3000, '{') + "%if 1%}").find("chat template"),
            std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 2000; ++i) chain += " + 1";
  EXPECT_NE(render_error(chain + " }}").find("nested deeper"), std::string::npos);
  // Half a million operands: the interpreter refuses the depth, and freeing the tree must not
  // recurse (it did, to a stack overflow, before the AST's destructor became iterative).
  std::string long_chain = "{{ 1";
  for (int i = 0; i < 500000; ++i) long_chain += "+1";
  EXPECT_NE(render_error(long_chain + " }}").find("nested deeper"), std::string::npos);
  std::string long_filters = "{{ 'a'";
  for (int i = 0; i < 200000; ++i) long_filters += "|lower";
  EXPECT_NE(render_error(long_filters + " }}").find("nested deeper"), std::string::npos);
  // A namespace nested in a list, one level per iteration.
  EXPECT_NE(render_error("{% set ns = namespace(l=[]) %}{% for i in range(1000) %}"
                         "{% set ns.l = [ns.l] %}{% endfor %}{{ ns.l }}")
                .find("nested deeper"),
            std::string::npos);
  EXPECT_NE(render_error("{% set ns = namespace(x=1) %}{% set ns.x = [ns] %}{{ ns }}")
                .find("inside itself"),
            std::string::npos);
  ChatRequest deep;
  deep.messages = nlohmann::ordered_json::parse(std::string(1000, '[') + std::string(1000, ']'));
  EXPECT_THROW(ChatTemplate("{{ messages }}", "", "").render(deep), Error);
}

TEST(FuzzLimits, IntegerOverflowInTemplateIsAnError) {
  EXPECT_NE(render_error("{{ 9223372036854775807 + 1 }}").find("overflow"), std::string::npos);
  EXPECT_NE(render_error("{{ -9223372036854775807 - 2 }}").find("overflow"), std::string::npos);
  EXPECT_NE(render_error("{{ 99999999999999999999 }}").find("out of range"), std::string::npos);
  EXPECT_EQ(render_error("{{ [1, 2, 3][1::9223372036854775807] }}"), "");
}

TEST(FuzzLimits, MalformedSubscriptsAreParseErrors) {
  EXPECT_NE(render_error("{{ messages[] }}").find("empty subscript"), std::string::npos);
  EXPECT_NE(render_error("{{ messages[0 1] }}").find("subscript"), std::string::npos);
  EXPECT_EQ(render_error("{{ messages[0]['role'] }}{{ messages[:1] }}"), "");
}

TEST(FuzzLimits, AbsurdSafetensorsHeadersAreErrors) {
  const auto parse = [](uint64_t header_len, const std::string& header) {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(header_len >> (8 * i));
    bytes += header;
    parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "t");
  };
  EXPECT_THROW(parse(~uint64_t{0}, "{}"), Error);
  const std::string overflow =
      R"({"w": {"dtype": "F16", "shape": [4294967296, 4294967296, 4], "data_offsets": [0, 0]}})";
  EXPECT_THROW(parse(overflow.size(), overflow), Error);
}

TEST(FuzzLimits, OversizedConfigsAndTokenIdsAreErrors) {
  const std::string base =
      R"("architectures": ["LlamaForCausalLM"], "intermediate_size": 128,
         "num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64)";
  EXPECT_NO_THROW(ModelConfig::from_json_text("{" + base + R"(, "vocab_size": 128})", "c"));
  EXPECT_THROW(ModelConfig::from_json_text("{" + base + R"(, "vocab_size": 1e50})", "c"), Error);
  EXPECT_THROW(ModelConfig::from_json_text("{" + base + R"(, "vocab_size": 1099511627776})", "c"),
               Error);
  EXPECT_THROW(Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 2147483647},
                                       "merges": []}})"),
               Error);
  EXPECT_THROW(Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0.5},
                                       "merges": []}})"),
               Error);
}

TEST(FuzzLimits, RequestsBeyondMaxTokensAndNAreBadRequests) {
  server::ServerLimits limits;
  limits.served_model_name = "m";
  limits.max_model_len = 512;
  limits.vocab_size = 100;
  const auto body = [](const std::string& extra) {
    return server::json::parse(R"({"model": "m", "prompt": [1, 2])" + extra + "}");
  };
  EXPECT_THROW(server::parse_completion_request(body(R"(, "n": 17)"), limits), server::ApiError);
  EXPECT_THROW(server::parse_completion_request(body(R"(, "max_tokens": 1e12)"), limits),
               server::ApiError);  // past 32 bits
  const auto request = server::parse_completion_request(body(R"(, "max_tokens": 1e6)"), limits);
  EXPECT_THROW(server::resolve_max_tokens(request, 2, limits.max_model_len), server::ApiError);
  EXPECT_THROW(server::parse_completion_request(body(R"(, "max_tokens": 0)"), limits),
               server::ApiError);
}

}  // namespace
}  // namespace l2kv
