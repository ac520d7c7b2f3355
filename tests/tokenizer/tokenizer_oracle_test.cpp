// l2kv's tokenizers against Hugging Face's own implementation (tokenizers.js 0.2.0, which
// agrees with the Rust library on these tokenizers) on a corpus of prose, code, numbers,
// whitespace, emoji, CJK, Arabic, combining marks and special tokens. The oracle's output is
// written by scripts/tokenizer_test_data.sh.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/stream_detokenizer.h"
#include "l2kv/tokenizer/tokenizer.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv {
namespace {

const std::filesystem::path kPackages = L2KV_TOKENIZER_PACKAGES;
const std::filesystem::path kOracle = L2KV_TOKENIZER_ORACLE;

std::filesystem::path model_dir(const std::string& name) {
  return kPackages / ("tokenizer-" + name) / "models";
}

// Loading a 128K-token vocabulary takes most of a second: load each tokenizer once.
const Tokenizer& cached_tokenizer(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, Tokenizer::from_folder(model_dir(name))).first;
  return it->second;
}

nlohmann::json load_oracle(const std::string& name) {
  std::ifstream f(kOracle / (name + ".json"));
  if (!f) {
    ADD_FAILURE() << "missing " << (kOracle / (name + ".json"))
                  << ": run scripts/tokenizer_test_data.sh";
    return {};
  }
  return nlohmann::json::parse(f);
}

class TokenizerOracle : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerOracle, IdsMatchHuggingFaceOnTheCorpus) {
  const auto oracle = load_oracle(GetParam());
  if (oracle.is_null()) return;
  const Tokenizer& tok = cached_tokenizer(GetParam());
  int agree = 0, total = 0;
  for (const auto& e : oracle.at("entries")) {
    const std::string text = e.at("text");
    const auto expected = e.at("ids").get<std::vector<int32_t>>();
    const auto expected_plain = e.at("ids_without_special").get<std::vector<int32_t>>();
    const auto ids = tok.encode(text);
    ++total;
    agree += ids == expected;
    EXPECT_EQ(ids, expected) << "text: " << text;
    EXPECT_EQ(tok.encode(text, false), expected_plain) << "text: " << text;
  }
  std::printf("%s: %d of %d corpus entries agree with the oracle\n", GetParam().c_str(), agree,
              total);
}

TEST_P(TokenizerOracle, DecodeMatchesAndStreamsWholeCharacters) {
  const auto oracle = load_oracle(GetParam());
  if (oracle.is_null()) return;
  const Tokenizer& tok = cached_tokenizer(GetParam());
  for (const auto& e : oracle.at("entries")) {
    const auto ids = e.at("ids_without_special").get<std::vector<int32_t>>();
    const std::string full = tok.decode(ids);
    EXPECT_EQ(full, e.at("decoded").get<std::string>()) << "text: " << e.at("text");
    StreamDetokenizer stream(tok);
    std::string streamed;
    for (int32_t id : ids) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(utf8::is_valid(piece));
      EXPECT_EQ(piece.find("\xEF\xBF\xBD"), std::string::npos)
          << "a character was cut: " << e.at("text");
      streamed += piece;
    }
    streamed += stream.finish();
    EXPECT_EQ(streamed, full);
  }
}

TEST_P(TokenizerOracle, InvalidUtf8IsRepairedNotFatal) {
  const Tokenizer& tok = cached_tokenizer(GetParam());
  const std::string bad =
      "ab\xFF\xFE"
      "cd\xC3";
  const std::string repaired =
      "ab\xEF\xBF\xBD\xEF\xBF\xBD"
      "cd\xEF\xBF\xBD";
  EXPECT_EQ(tok.encode(bad), tok.encode(repaired));
  EXPECT_FALSE(tok.encode(bad).empty());
}

// A model may have more embedding rows than its tokenizer has tokens (Qwen2.5: 151,936 for
// 151,665) and sample one: such ids decode to nothing, as in Hugging Face tokenizers, and the
// text around them stays.
TEST_P(TokenizerOracle, IdsWithoutATokenDecodeToNothing) {
  const Tokenizer& tok = cached_tokenizer(GetParam());
  const std::vector<int32_t> hello = tok.encode("hello world", false);
  std::vector<int32_t> ids{tok.vocab_size(), -1};
  ids.insert(ids.end(), hello.begin(), hello.end());
  ids.push_back(tok.vocab_size() + 1000);
  EXPECT_EQ(tok.decode(ids), tok.decode(hello));
  EXPECT_EQ(tok.decode(std::vector<int32_t>{tok.vocab_size()}), "");
}

INSTANTIATE_TEST_SUITE_P(RealTokenizers, TokenizerOracle,
                         ::testing::Values("llama2", "llama3_1", "qwen3", "gemma3"));

TEST(Tokenizer, SpecialTokensFromConfig) {
  const Tokenizer& llama3 = cached_tokenizer("llama3_1");
  EXPECT_EQ(llama3.bos_token(), "<|begin_of_text|>");
  EXPECT_EQ(llama3.eos_token(), "<|eot_id|>");
  EXPECT_EQ(llama3.token_to_id("<|begin_of_text|>"), 128000);
  EXPECT_TRUE(llama3.is_special(128000));
  EXPECT_FALSE(llama3.chat_template().empty());
  const auto ids = llama3.encode("<|begin_of_text|>hi");
  EXPECT_EQ(llama3.decode(ids, /*skip_special_tokens=*/true), "hi");
}

TEST(Tokenizer, BadFilesGiveClearErrors) {
  const auto dir = std::filesystem::temp_directory_path() / "l2kv_tokenizer_bad";
  std::filesystem::create_directories(dir);
  auto expect_error = [&](const std::string& content, const std::string& fragment) {
    std::ofstream(dir / "tokenizer.json") << content;
    try {
      Tokenizer::from_folder(dir);
      ADD_FAILURE() << "expected an error containing '" << fragment << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_error("{not json", "not valid JSON");
  expect_error(R"({"model": {"type": "WordPiece", "vocab": {}}})", "WordPiece");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}})",
               "missing from the vocabulary");
  // Taken silently before (Hugging Face refuses them): a merge of three, merges not a list.
  expect_error(
      R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b", "c"]]}})",
      "a merge must be two strings");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": {}}})",
               "merges must be a list");
  expect_error(R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [5]}})",
               "a merge must be");
  expect_error(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "NFKD"}})",
      "NFKD");
  expect_error(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(["}, "behavior": "Isolated"}})",
      "does not compile");
  std::filesystem::remove(dir / "tokenizer.json");
  try {
    Tokenizer::from_folder(dir);
    ADD_FAILURE() << "expected an error for a missing tokenizer.json";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace l2kv
