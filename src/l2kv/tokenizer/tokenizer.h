// A Hugging Face tokenizer loaded from tokenizer.json (+ tokenizer_config.json): text to ids
// exactly as HF's tokenizers compute them, and ids back to text.
//
// encode: added tokens are matched first in the raw text; every other segment is normalized,
// pre-tokenized and run through BPE; the post-processor adds BOS/EOS when asked. Invalid
// UTF-8 input is repaired first: each invalid subsequence becomes U+FFFD (as Python's
// errors="replace"), never an error.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "l2kv/tokenizer/added_vocabulary.h"

namespace l2kv {

class BpeModel;
class Normalizer;
class PreTokenizer;
class Decoder;
class PostProcessor;

class Tokenizer {
 public:
  // Reads `folder`/tokenizer.json and, if present, `folder`/tokenizer_config.json; a chat
  // template tokenizer_config.json does not hold comes from chat_template.jinja (or the older
  // chat_template.json) beside it, as transformers saves them. Throws l2kv::Error naming the
  // file and the problem (missing, not JSON, unsupported component).
  static Tokenizer from_folder(const std::filesystem::path& folder);
  // From the two files' contents; `config_json` may be empty.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = {});

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids without a token (past the vocabulary, or a hole in it) decode to nothing, as in Hugging
  // Face tokenizers; requests that send ids are checked against the model's vocabulary first.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // The bytes token `id` adds inside a text, for grammars over tokens: no leading space is
  // stripped, a byte-fallback token <0xNN> is its one byte (even alone in a UTF-8 sequence),
  // an added token is its content. Throws l2kv::Error for an id outside the vocabulary.
  std::string token_bytes(int32_t id) const;

  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int32_t id) const;
  int32_t vocab_size() const;
  bool is_special(int32_t id) const;

  // From tokenizer_config.json (a string or an AddedToken object); empty when not set.
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  // The chat template: tokenizer_config.json's string, or of its list of named templates the
  // one named "default" (or the only one); the list's "tool_use" template, for requests with
  // tools, in chat_template_tool_use() (empty when there is none).
  const std::string& chat_template() const { return chat_template_; }
  const std::string& chat_template_tool_use() const { return chat_template_tool_use_; }

 private:
  Tokenizer();
  // From the parsed tokenizer.json and tokenizer_config.json (an object).
  static Tokenizer from_parsed(const nlohmann::json& spec, const nlohmann::json& config);
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Decoder> decoder_;
  std::unique_ptr<PostProcessor> post_processor_;
  AddedVocabulary added_;
  std::string bos_token_, eos_token_, chat_template_, chat_template_tool_use_;
  // The decoder maps GPT-2's byte-level alphabet back to bytes (token_bytes does it per token,
  // without the decoder's UTF-8 repair).
  bool byte_level_decoder_ = false;
};

}  // namespace l2kv
