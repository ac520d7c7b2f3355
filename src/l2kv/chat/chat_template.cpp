#include "l2kv/chat/chat_template.h"

#include "l2kv/chat/jinja_interpreter.h"
#include "l2kv/chat/jinja_parser.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv {

const char* const ChatTemplate::kDefaultTemplate =
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ bos_token + '[INST] ' }}"
    "{%- if loop.first and system is not none -%}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' "
    "}}{%- endif -%}"
    "{{ message['content'] | trim + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ' + message['content'] | trim + ' ' + eos_token }}"
    "{%- else -%}{{ raise_exception('Only user and assistant roles are supported after an optional "
    "system message') }}"
    "{%- endif -%}"
    "{%- endfor -%}";

ChatTemplate::ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token)
    : program_(jinja::parse(source)),
      bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)) {}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tokenizer) {
  const std::string& source =
      tokenizer.chat_template().empty() ? kDefaultTemplate : tokenizer.chat_template();
  ChatTemplate t(source, tokenizer.bos_token(), tokenizer.eos_token());
  if (!tokenizer.chat_template_tool_use().empty())
    t.tool_use_program_ = jinja::parse(tokenizer.chat_template_tool_use());
  return t;
}

std::string ChatTemplate::render(const ChatRequest& request) const {
  jinja::Globals globals = {
      {"messages", jinja::Value::from_json(request.messages)},
      {"add_generation_prompt", jinja::Value(request.add_generation_prompt)},
      {"bos_token", jinja::Value(bos_token_)},
      {"eos_token", jinja::Value(eos_token_)},
  };
  if (!request.tools.is_null())
    globals.emplace_back("tools", jinja::Value::from_json(request.tools));
  for (const auto& [key, value] : request.extra.items())
    globals.emplace_back(key, jinja::Value::from_json(value));
  const bool tools = !request.tools.is_null() && tool_use_program_.has_value();
  return jinja::render(tools ? *tool_use_program_ : program_, globals);
}

}  // namespace l2kv
