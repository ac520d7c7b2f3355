#include "l2kv/tokenizer/tokenizer.h"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "l2kv/core/error.h"
#include "l2kv/tokenizer/bpe_model.h"
#include "l2kv/tokenizer/byte_level.h"
#include "l2kv/tokenizer/decoder.h"
#include "l2kv/tokenizer/normalizer.h"
#include "l2kv/tokenizer/post_processor.h"
#include "l2kv/tokenizer/pre_tokenizer.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv {
namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error("cannot open " + path.string());
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// tokenizer_config.json writes special tokens as a string or as {"content": ...}.
std::string token_text(const nlohmann::json& config, const char* key) {
  if (!config.contains(key) || config.at(key).is_null()) return {};
  const auto& v = config.at(key);
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string())
    return v.at("content").get<std::string>();
  throw Error(std::string("tokenizer_config.json: ") + key +
              " must be a string or {\"content\": a string}, got " + v.dump().substr(0, 64));
}

// tokenizer_config.json's chat_template: a string, null, or a list of {"name", "template"}
// (transformers picks "default", and "tool_use" for requests with tools).
void read_chat_templates(const nlohmann::json& config, std::string& main, std::string& tool_use) {
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return;
  if (it->is_string()) {
    main = it->get<std::string>();
    return;
  }
  const auto bad = [&] {
    return Error(
        "tokenizer_config.json: chat_template must be a string or a list of {\"name\": ..., "
        "\"template\": ...}, got " +
        it->dump().substr(0, 64));
  };
  if (!it->is_array() || it->empty()) throw bad();
  for (const auto& entry : *it) {
    if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() ||
        !entry.contains("template") || !entry["template"].is_string())
      throw bad();
    const std::string name = entry["name"].get<std::string>();
    if (name == "default" || it->size() == 1) main = entry["template"].get<std::string>();
    if (name == "tool_use") tool_use = entry["template"].get<std::string>();
  }
  if (main.empty())
    throw Error(
        "tokenizer_config.json: chat_template lists several templates and none is named "
        "\"default\"");
}

nlohmann::json parse_tokenizer_json(std::string_view text) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("tokenizer.json is not valid JSON: ") + e.what());
  }
}

// tokenizer_config.json's object; empty text (no file) is an empty one.
nlohmann::json parse_tokenizer_config(std::string_view text) {
  nlohmann::json config;
  try {
    config = text.empty() ? nlohmann::json::object() : nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("tokenizer_config.json is not valid JSON: ") + e.what());
  }
  if (!config.is_object())
    throw Error("tokenizer_config.json must hold an object, got " + config.dump().substr(0, 64));
  return config;
}

}  // namespace

Tokenizer::Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::from_folder(const std::filesystem::path& folder) {
  const auto config_path = folder / "tokenizer_config.json";
  const std::string tokenizer_json = read_file(folder / "tokenizer.json");
  const std::string config_json =
      std::filesystem::exists(config_path) ? read_file(config_path) : "";
  try {
    const nlohmann::json spec = parse_tokenizer_json(tokenizer_json);
    nlohmann::json config = parse_tokenizer_config(config_json);
    // transformers 4.43+ saves the template as chat_template.jinja (earlier: chat_template.json)
    // beside a tokenizer_config.json that no longer holds it.
    const auto jinja_path = folder / "chat_template.jinja";
    const auto json_path = folder / "chat_template.json";
    if (!config.contains("chat_template")) {
      if (std::filesystem::exists(jinja_path)) {
        config["chat_template"] = read_file(jinja_path);
      } else if (std::filesystem::exists(json_path)) {
        nlohmann::json t;
        try {
          t = nlohmann::json::parse(read_file(json_path));
        } catch (const nlohmann::json::exception& e) {
          throw Error(std::string("chat_template.json is not valid JSON: ") + e.what());
        }
        if (!t.is_object() || !t.contains("chat_template"))
          throw Error("chat_template.json has no \"chat_template\" field");
        config["chat_template"] = t["chat_template"];
      }
    }
    return from_parsed(spec, config);
  } catch (const Error& e) {
    throw Error(folder.string() + ": " + e.what());
  }
}

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json, std::string_view config_json) {
  return from_parsed(parse_tokenizer_json(tokenizer_json), parse_tokenizer_config(config_json));
}

Tokenizer Tokenizer::from_parsed(const nlohmann::json& spec, const nlohmann::json& config) {
  Tokenizer t;
  try {
    t.model_ = std::make_unique<BpeModel>(spec.at("model"));
    t.normalizer_ = make_normalizer(spec.value("normalizer", nlohmann::json()));
    t.pre_tokenizer_ = make_pre_tokenizer(spec.value("pre_tokenizer", nlohmann::json()));
    t.decoder_ = make_decoder(spec.value("decoder", nlohmann::json()));
    const nlohmann::json decoder = spec.value("decoder", nlohmann::json());
    t.byte_level_decoder_ = decoder.is_object() && decoder.value("type", "") == "ByteLevel";
    if (decoder.is_object() && decoder.value("type", "") == "Sequence")
      for (const auto& d : decoder.value("decoders", nlohmann::json::array()))
        t.byte_level_decoder_ |= d.is_object() && d.value("type", "") == "ByteLevel";
    t.post_processor_ =
        std::make_unique<PostProcessor>(spec.value("post_processor", nlohmann::json()));
    t.added_ = AddedVocabulary(spec.value("added_tokens", nlohmann::json::array()));
    // encode() must only produce ids that decode() knows.
    for (const auto* ids : {&t.post_processor_->prefix(), &t.post_processor_->suffix()})
      for (const int32_t id : *ids)
        if (!t.added_.find(id) && t.model_->id_to_token(id).empty())
          throw Error("tokenizer.json: the post-processor adds token id " + std::to_string(id) +
                      ", which is neither in the vocabulary nor an added token");
    t.bos_token_ = token_text(config, "bos_token");
    t.eos_token_ = token_text(config, "eos_token");
    read_chat_templates(config, t.chat_template_, t.chat_template_tool_use_);
  } catch (const nlohmann::json::exception& e) {
    throw Error(std::string("tokenizer.json is malformed: ") + e.what());
  }
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const std::string repaired = utf8::is_valid(text) ? std::string(text) : utf8::repair(text);
  std::vector<int32_t> ids;
  for (const auto& segment : added_.split(repaired)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    std::string normalized(segment.text);
    if (normalizer_) normalized = normalizer_->normalize(std::move(normalized));
    std::vector<std::string> pieces{std::move(normalized)};
    if (pre_tokenizer_) pieces = pre_tokenizer_->split(std::move(pieces));
    for (const auto& piece : pieces) model_->tokenize(piece, ids);
  }
  return add_special_tokens ? post_processor_->apply(ids) : ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (const AddedToken* added = added_.find(id)) {
      if (!(skip_special_tokens && added->special)) tokens.push_back(added->content);
      continue;
    }
    // An id without a token (a model's embedding rows past the tokenizer's vocabulary, as
    // Qwen2.5's 151,936 rows for 151,665 tokens, or a hole in it) decodes to nothing, as in
    // Hugging Face tokenizers: a model that samples one must not end its request.
    if (id < 0 || id >= model_->vocab_size() || model_->id_to_token(id).empty()) continue;
    tokens.push_back(model_->id_to_token(id));
  }
  if (decoder_) tokens = decoder_->decode_chain(std::move(tokens));
  std::string text;
  for (const auto& t : tokens) text += t;
  return text;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  if (const AddedToken* added = added_.find(id)) return added->content;
  if (id < 0 || id >= model_->vocab_size() || model_->id_to_token(id).empty())
    throw Error("token_bytes: token id " + std::to_string(id) + " is outside the vocabulary of " +
                std::to_string(vocab_size()));
  const std::string& piece = model_->id_to_token(id);
  if (!decoder_) return piece;
  if (byte_level_decoder_) {
    // Each character is one byte; a token may end inside a UTF-8 sequence, which the decoder
    // would repair to U+FFFD.
    std::string bytes;
    for (size_t i = 0; i < piece.size();) {
      const size_t start = i;
      const char32_t cp = utf8::next(piece, i);
      if (const auto b = byte_level::byte_of(cp))
        bytes += static_cast<char>(*b);
      else
        bytes.append(piece, start, i - start);
    }
    return bytes;
  }
  auto joined = [&](std::vector<std::string> tokens) {
    std::string text;
    for (const auto& t : decoder_->decode_chain(std::move(tokens))) text += t;
    return text;
  };
  unsigned value = 0;
  if (piece.size() == 6 && piece.starts_with("<0x") && piece.back() == '>' &&
      std::sscanf(piece.c_str() + 3, "%2x", &value) == 1 && joined({piece}) != piece)
    return std::string(1, static_cast<char>(value));  // the decoder's byte fallback took it
  // After another token, so that decoders that strip the text's first space keep this one's.
  const std::string before = joined({"a"});
  const std::string both = joined({"a", piece});
  if (both.starts_with(before)) return both.substr(before.size());
  return joined({piece});
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  for (const auto& t : added_.tokens())
    if (t.content == token) return t.id;
  return model_->token_to_id(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  if (const AddedToken* added = added_.find(id)) return added->content;
  return model_->id_to_token(id);
}

int32_t Tokenizer::vocab_size() const {
  int32_t size = model_->vocab_size();
  for (const auto& t : added_.tokens()) size = std::max(size, t.id + 1);
  return size;
}

bool Tokenizer::is_special(int32_t id) const {
  const AddedToken* added = added_.find(id);
  return added != nullptr && added->special;
}

}  // namespace l2kv
