// What each fuzz target does with one input, shared by the libFuzzer targets (fuzz_*.cpp) and
// the regression test that replays the crashes they found (tests/fuzz_regressions_test.cpp).
// Each runs an input through the same entry points l2kv uses on files and requests; a
// malformed input must end in l2kv's own error (caught here), anything else escapes: another
// exception, a sanitizer report, or an abort() where a parser's promise is broken.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "l2kv/chat/chat_template.h"
#include "l2kv/core/error.h"
#include "l2kv/model/model_config.h"
#include "l2kv/model/safetensors.h"
#include "l2kv/server/openai_protocol.h"
#include "l2kv/server/tool_calls.h"
#include "l2kv/structured/gbnf_grammar.h"
#include "l2kv/structured/grammar_cache.h"
#include "l2kv/structured/grammar_matcher.h"
#include "l2kv/structured/json_schema.h"
#include "l2kv/structured/regex_grammar.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv::fuzz {

// Targets that take several texts read them from one input split at this line, so the corpus
// files stay readable.
inline constexpr std::string_view kSeparator = "\n#----#\n";

// The parts of `data` between separators; exactly `count` of them (missing ones are empty,
// extra separators stay in the last part).
inline std::vector<std::string> split_input(const uint8_t* data, size_t size, size_t count) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  while (parts.size() + 1 < count) {
    const size_t at = rest.find(kSeparator);
    if (at == std::string_view::npos) break;
    parts.emplace_back(rest.substr(0, at));
    rest.remove_prefix(at + kSeparator.size());
  }
  parts.emplace_back(rest);
  parts.resize(count);
  return parts;
}

// The bytes of a .safetensors file, parsed in memory as SafetensorsFile parses its mapping.
// Every tensor accepted must lie inside the buffer and convert to float.
inline void run_safetensors(const uint8_t* data, size_t size) {
  try {
    const auto tensors = parse_safetensors(data, size, "fuzz.safetensors");
    for (const auto& [name, t] : tensors) {
      if (t.bytes > 0 && (t.data < data || t.data + t.bytes > data + size)) std::abort();
      if (t.dtype != TensorDType::kOther && t.elements() <= (1 << 16)) (void)t.to_float();
    }
  } catch (const Error&) {
  }
}

// config.json text -> ModelConfig, then what the loader derives from it.
inline void run_model_config(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const auto config = ModelConfig::from_json_text(text, "config.json");
    (void)config.parameter_count();
    (void)rope_inverse_frequencies(config.rope, config.head_dim);
  } catch (const Error&) {
  }
}

// tokenizer.json, tokenizer_config.json and a text (any bytes, invalid UTF-8 included): load,
// encode with and without special tokens, decode the ids with and without special tokens,
// then decode ids read from the text's bytes (out-of-vocabulary ones are an error).
inline void run_tokenizer(const uint8_t* data, size_t size) {
  const auto parts = split_input(data, size, 3);
  std::optional<Tokenizer> tokenizer;
  try {
    tokenizer.emplace(Tokenizer::from_json(parts[0], parts[1]));
  } catch (const Error&) {
    return;
  }
  for (const bool special : {true, false}) {
    std::vector<int32_t> ids;
    try {
      // A vocabulary that lacks a character and has no unk_token cannot encode it: an error.
      ids = tokenizer->encode(parts[2], special);
    } catch (const Error&) {
      continue;
    }
    (void)tokenizer->decode(ids, false);
    (void)tokenizer->decode(ids, true);
  }
  std::vector<int32_t> raw(parts[2].size() / 4);
  if (!raw.empty()) std::memcpy(raw.data(), parts[2].data(), raw.size() * 4);
  try {
    (void)tokenizer->decode(raw, false);
  } catch (const Error&) {
  }
}

// A chat template's source and a messages JSON (a list, or {"messages", "tools"}), parsed and
// rendered as the server renders a chat request.
inline void run_chat_template(const uint8_t* data, size_t size) {
  const auto parts = split_input(data, size, 2);
  ChatRequest request;
  const auto messages = nlohmann::ordered_json::parse(parts[1], nullptr, false);
  if (!messages.is_discarded()) {
    if (messages.is_object() && messages.contains("messages")) {
      request.messages = messages["messages"];
      if (messages.contains("tools")) request.tools = messages["tools"];
    } else {
      request.messages = messages;
    }
  }
  request.add_generation_prompt = size % 2 == 0;
  try {
    const ChatTemplate chat_template(parts[0], "<s>", "</s>");
    (void)chat_template.render(request);
  } catch (const Error&) {
  }
}

// A small vocabulary for grammars: every printable ASCII byte alone, a few pieces of JSON and
// the two bytes of "é", then EOS.
inline std::shared_ptr<const structured::TokenVocabulary> fuzz_vocabulary() {
  static const auto vocabulary = [] {
    std::vector<std::string> tokens;
    for (int c = 0x20; c < 0x7F; ++c) tokens.emplace_back(1, static_cast<char>(c));
    for (const char* t : {"\n", "{\"", "\":", "\",", "true", "null", "\xC3", "\xA9", "<tool_call>"})
      tokens.emplace_back(t);
    tokens.emplace_back("</s>");
    const int32_t eos = static_cast<int32_t>(tokens.size()) - 1;
    return std::make_shared<const structured::TokenVocabulary>(std::move(tokens),
                                                               std::vector<int32_t>{eos});
  }();
  return vocabulary;
}

// A grammar walked the way the engine walks it: the mask, then an allowed token, a few steps.
inline void walk_grammar(structured::Grammar grammar, const std::string& text) {
  const auto compiled =
      std::make_shared<structured::CompiledGrammar>(std::move(grammar), fuzz_vocabulary());
  (void)structured::grammar_matches(compiled->grammar(), text);
  structured::GrammarMatcher matcher(compiled);
  std::vector<uint32_t> mask(structured::mask_words(fuzz_vocabulary()->size()));
  for (size_t step = 0; step < 8 && !matcher.terminated(); ++step) {
    if (matcher.fill_mask(mask) == 0) break;
    int32_t pick = -1;
    for (int32_t id = 0; id < fuzz_vocabulary()->size() && pick < 0; ++id)
      if ((mask[id >> 5] >> (id & 31)) & 1) pick = id;
    // Every token the mask allows must be accepted.
    if (!matcher.accept_token(pick)) std::abort();
  }
}

// A JSON schema (or, when it is not JSON, a GBNF grammar if it holds "::=", else a regex) and
// a text: compiled, the text matched and the grammar walked over a small vocabulary.
// Unsupported keywords and malformed grammars are l2kv::Error.
inline void run_json_schema(const uint8_t* data, size_t size) {
  const auto parts = split_input(data, size, 2);
  try {
    const auto schema = nlohmann::ordered_json::parse(parts[0], nullptr, false);
    if (!schema.is_discarded())
      walk_grammar(structured::json_schema_grammar(schema), parts[1]);
    else if (parts[0].find("::=") != std::string::npos)
      walk_grammar(structured::gbnf_grammar(parts[0]), parts[1]);
    else
      walk_grammar(structured::regex_grammar(parts[0]), parts[1]);
  } catch (const Error&) {
  }
}

// A tool-call stream's deltas put together as a client does: content, and per call its name
// and arguments.
struct StreamedToolCalls {
  std::string content;
  std::vector<server::ToolCall> calls;
  bool broken = false;
  bool operator==(const StreamedToolCalls& o) const {
    if (content != o.content || broken != o.broken || calls.size() != o.calls.size()) return false;
    for (size_t k = 0; k < calls.size(); ++k)
      if (calls[k].name != o.calls[k].name || calls[k].arguments != o.calls[k].arguments)
        return false;
    return true;
  }
};

// `text` streamed in pieces cut at the offsets `cut` gives (1 + its value, from `at`).
template <typename Cut>
StreamedToolCalls stream_tool_calls(server::ToolChoice choice, server::ToolCallParser parser,
                                    const std::string& text, const Cut& cut) {
  server::ToolCallStream stream(choice, parser, "f");
  StreamedToolCalls out;
  auto take = [&](const std::vector<server::ToolStreamEvent>& events) {
    for (const server::ToolStreamEvent& e : events) {
      if (e.kind == server::ToolStreamEvent::Kind::kContent) {
        out.content += e.text;
      } else if (e.kind == server::ToolStreamEvent::Kind::kCallStart) {
        if (e.call != out.calls.size()) std::abort();  // calls start in order
        out.calls.push_back({e.text, ""});
      } else {
        if (e.call + 1 != out.calls.size()) std::abort();  // only the last call goes on
        out.calls[e.call].arguments += e.text;
      }
    }
  };
  for (size_t at = 0; at < text.size();) {
    const size_t n = 1 + cut(at);
    take(stream.push(std::string_view(text).substr(at, n)));
    at += n;
  }
  take(stream.finish());
  out.broken = stream.broken();
  return out;
}

// A chat's output text: every parser and tool_choice, whole and streamed in pieces (whole,
// byte by byte, cut by the input's bytes). However it is cut, the stream sends the same;
// what it sends is the non-streamed parse, unless a started call broke or reasoning closes
// after a call (the non-streamed parse reads from the last </think>); without calls, all of
// the text is content.
inline void run_tool_calls(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  using server::ToolCallParser;
  using server::ToolChoice;
  const std::pair<ToolChoice, ToolCallParser> kinds[] = {
      {ToolChoice::kAuto, ToolCallParser::kHermes},
      {ToolChoice::kAuto, ToolCallParser::kLlama3Json},
      {ToolChoice::kAuto, ToolCallParser::kMistral},
      {ToolChoice::kRequired, ToolCallParser::kNone},
      {ToolChoice::kNamed, ToolCallParser::kNone}};
  for (const auto& [choice, parser] : kinds) {
    const server::ParsedToolOutput whole = server::parse_tool_calls(choice, parser, "f", text);
    const StreamedToolCalls at_once =
        stream_tool_calls(choice, parser, text, [&](size_t) { return text.size(); });
    const StreamedToolCalls bytes = stream_tool_calls(choice, parser, text, [](size_t) { return 0; });
    const StreamedToolCalls pieces = stream_tool_calls(
        choice, parser, text, [&](size_t at) { return static_cast<uint8_t>(text[at]) % 7; });
    if (!(bytes == at_once) || !(pieces == at_once)) std::abort();
    if (at_once.calls.empty() && at_once.content != text) std::abort();  // nothing lost
    if (at_once.broken || text.find("</think>") != std::string::npos) continue;
    if (whole.calls.size() != at_once.calls.size()) std::abort();
    for (size_t k = 0; k < whole.calls.size(); ++k)
      if (whole.calls[k].name != at_once.calls[k].name ||
          whole.calls[k].arguments != at_once.calls[k].arguments)
        std::abort();
    if (whole.content.value_or("") != at_once.content && choice != ToolChoice::kNamed) std::abort();
  }
}

// A JSON body for POST /v1/completions and /v1/chat/completions, validated by both endpoints'
// parsers, then max_tokens resolved against a prompt length taken from the input and the
// prompts tokenized without a tokenizer (token ids only). Invalid requests are ApiError.
// Structured outputs and tools compile over a small vocabulary; "auto" reads hermes calls.
inline void run_openai_request(const uint8_t* data, size_t size) {
  const auto body = server::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return;
  static structured::GrammarCache grammars(fuzz_vocabulary(), 16);
  server::ServerLimits limits;
  limits.served_model_name = "l2kv-model";
  limits.max_model_len = 512;
  limits.vocab_size = 32000;
  limits.grammars = &grammars;
  limits.tool_call_parser = server::ToolCallParser::kHermes;
  const auto check = [&](const server::ApiRequest& request) {
    if (request.n < 1 || request.n > server::kMaxChoices) std::abort();
    try {
      (void)server::resolve_max_tokens(request, static_cast<int32_t>(size % 600),
                                       limits.max_model_len);
    } catch (const server::ApiError& e) {
      (void)e.to_json();
    }
    try {
      (void)server::tokenize_prompts(request, nullptr, nullptr);
    } catch (const server::ApiError& e) {
      (void)e.to_json();
    }
  };
  for (const bool chat : {false, true}) {
    try {
      check(chat ? server::parse_chat_request(body, limits)
                 : server::parse_completion_request(body, limits));
    } catch (const server::ApiError& e) {
      (void)e.to_json();
    }
  }
}

}  // namespace l2kv::fuzz
