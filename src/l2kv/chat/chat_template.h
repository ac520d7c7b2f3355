// Chat templates: the model's own Jinja `chat_template` from tokenizer_config.json, rendered by
// l2kv's interpreter into the prompt text, as transformers' apply_chat_template does
// (trim_blocks, lstrip_blocks; bos_token, eos_token, messages, tools, add_generation_prompt).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "l2kv/chat/jinja_ast.h"

namespace l2kv {

class Tokenizer;

struct ChatRequest {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();  // [{"role", "content", ...}]
  nlohmann::ordered_json tools;                                       // null = none given
  bool add_generation_prompt = true;
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // more template variables
};

class ChatTemplate {
 public:
  // Parses `source`; an unsupported construct throws l2kv::Error here, at load time.
  ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token);
  // The tokenizer's own template, or kDefaultTemplate when it has none; with its "tool_use"
  // template (Tokenizer::chat_template_tool_use) for requests that carry tools.
  static ChatTemplate for_tokenizer(const Tokenizer& tokenizer);

  // Throws l2kv::Error when the template raises (raise_exception) or meets a type error.
  std::string render(const ChatRequest& request) const;

  // For models that ship no template: the Llama 2 chat format, "<s>[INST] <<SYS>>\n{system}\n
  // <</SYS>>\n\n{user} [/INST] {assistant} </s>" per turn.
  static const char* const kDefaultTemplate;

 private:
  jinja::Program program_;
  std::optional<jinja::Program> tool_use_program_;
  std::string bos_token_, eos_token_;
};

}  // namespace l2kv
