// The response half of openai_protocol.h: engine outputs to OpenAI's response objects,
// streaming chunks and logprobs (the request half, and /tokenize, are in openai_protocol.cpp).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "l2kv/server/openai_protocol.h"
#include "l2kv/tokenizer/tokenizer.h"
#include "l2kv/tokenizer/utf8.h"

namespace l2kv::server {

void ChoiceOutput::append(const RequestOutput& output) {
  if (!output.prompt_logprobs.empty()) prompt_logprobs = output.prompt_logprobs;
  text += output.new_text;
  tokens.insert(tokens.end(), output.new_tokens.begin(), output.new_tokens.end());
  logprobs.insert(logprobs.end(), output.new_logprobs.begin(), output.new_logprobs.end());
  prompt_tokens = output.prompt_tokens;
  completion_tokens = output.completion_tokens;
  if (output.finished) {
    finished = true;
    finish_reason = output.finish_reason;
    stop_reason = output.stop_reason;
    stop_token_id = output.stop_token_id;
    error = output.error;
  }
}

TokenText token_text_for(const Tokenizer* tokenizer) {
  if (!tokenizer) return [](int32_t id) { return "token_id:" + std::to_string(id); };
  // Decoded after an anchor token ("a"), then the anchor's text taken off: a token as it reads
  // inside a text. Decoded alone, SentencePiece tokenizers (Llama 2, Mistral) drop the space a
  // "▁the" begins with, as at the start of a text; vLLM's logprobs keep it.
  const std::vector<int32_t> a = tokenizer->encode("a", false);
  const int32_t anchor = a.size() == 1 ? a[0] : -1;
  const std::string anchor_text =
      anchor >= 0 ? tokenizer->decode(std::span<const int32_t>(&anchor, 1), false) : "";
  return [tokenizer, anchor, anchor_text](int32_t id) {
    if (anchor >= 0) {
      const int32_t ids[2] = {anchor, id};
      std::string both = tokenizer->decode(std::span<const int32_t>(ids, 2), false);
      if (both.compare(0, anchor_text.size(), anchor_text) == 0)
        return both.substr(anchor_text.size());
    }
    const int32_t ids[1] = {id};
    return tokenizer->decode(std::span<const int32_t>(ids, 1), false);
  };
}

json stop_reason_json(const std::string& reason, int32_t stop_token_id) {
  if (stop_token_id >= 0) return stop_token_id;
  return reason.empty() ? json(nullptr) : json(reason);
}

json finish_reason_json(FinishReason reason) {
  if (reason == FinishReason::kNone) return nullptr;
  return finish_reason_name(reason);
}

json usage_json(int64_t prompt_tokens, int64_t completion_tokens) {
  return {{"prompt_tokens", prompt_tokens},
          {"total_tokens", prompt_tokens + completion_tokens},
          {"completion_tokens", completion_tokens}};
}

int64_t text_length(const std::string& text) {
  // Invalid bytes reach the client as U+FFFD (dump_json's replacement): count them so.
  const std::string repaired = utf8::is_valid(text) ? std::string() : utf8::repair(text);
  int64_t characters = 0;
  for (const unsigned char c : repaired.empty() ? text : repaired)
    characters += (c & 0xC0) != 0x80;  // not a continuation byte
  return characters;
}

int64_t tokens_text_length(const std::vector<int32_t>& ids, const TokenText& text) {
  int64_t characters = 0;
  for (const int32_t id : ids) characters += text_length(text(id));
  return characters;
}

json completion_logprobs_json(const std::vector<SampledToken>& logprobs, const TokenText& text,
                              int64_t text_offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (const SampledToken& t : logprobs) {
    const std::string s = text(t.token);
    tokens.push_back(s);
    token_logprobs.push_back(t.logprob);
    json alternatives = json::object();
    for (const auto& [id, lp] : t.top_logprobs)
      if (std::isfinite(lp)) alternatives[text(id)] = lp;  // -inf: a token the grammar forbade
    // The sampled token is always among them (OpenAI's and vLLM's up to logprobs + 1).
    if (!alternatives.contains(s)) alternatives[s] = t.logprob;
    top.push_back(std::move(alternatives));
    offsets.push_back(text_offset);
    text_offset += text_length(s);
  }
  return {{"text_offset", offsets},
          {"token_logprobs", token_logprobs},
          {"tokens", tokens},
          {"top_logprobs", top}};
}

namespace {
json bytes_of(const std::string& s) {
  json bytes = json::array();
  for (unsigned char c : s) bytes.push_back(static_cast<int>(c));
  return bytes;
}
}  // namespace

json chat_logprobs_json(const std::vector<SampledToken>& logprobs, const TokenText& text) {
  json content = json::array();
  for (const SampledToken& t : logprobs) {
    const std::string s = text(t.token);
    json top = json::array();
    for (const auto& [id, lp] : t.top_logprobs) {
      if (!std::isfinite(lp)) continue;  // a token the grammar forbade (structured outputs)
      const std::string alt = text(id);
      top.push_back({{"token", alt}, {"logprob", lp}, {"bytes", bytes_of(alt)}});
    }
    content.push_back(
        {{"token", s}, {"logprob", t.logprob}, {"bytes", bytes_of(s)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

namespace {

// The envelope of a non-streamed response with the usage of all its choices.
json response_json(const ResponseHeader& header, const char* object, json choices,
                   const std::vector<int32_t>& prompt_tokens, int64_t completion_tokens) {
  int64_t prompt_total = 0;
  for (int32_t p : prompt_tokens) prompt_total += p;
  return {{"id", header.id},
          {"object", object},
          {"created", header.created},
          {"model", header.model},
          {"choices", std::move(choices)},
          {"usage", usage_json(prompt_total, completion_tokens)}};
}

}  // namespace
int32_t engine_prompt_logprobs(const ApiRequest& request) {
  const int32_t echoed = request.echo ? request.params.logprobs : -1;
  return std::max(request.prompt_logprobs, echoed);
}

json prompt_logprobs_json(const std::vector<PromptLogprob>& rows, const TokenText& text) {
  json out = json::array({nullptr});
  for (const PromptLogprob& row : rows) {
    json entry = json::object();
    entry[std::to_string(row.token)] = {
        {"logprob", row.logprob}, {"rank", row.rank}, {"decoded_token", text(row.token)}};
    for (size_t k = 0; k < row.top_logprobs.size(); ++k) {
      const auto& [id, lp] = row.top_logprobs[k];
      const std::string key = std::to_string(id);
      if (entry.contains(key)) continue;
      entry[key] = {{"logprob", lp}, {"rank", k + 1}, {"decoded_token", text(id)}};
    }
    out.push_back(std::move(entry));
  }
  return out;
}

json echoed_prompt_logprobs(const std::vector<int32_t>& ids, const std::vector<PromptLogprob>& rows,
                            const TokenText& text) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  int64_t offset = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string s = text(ids[i]);
    tokens.push_back(s);
    offsets.push_back(offset);
    offset += text_length(s);
    if (i == 0 || i - 1 >= rows.size()) {
      token_logprobs.push_back(nullptr);
      top.push_back(nullptr);
      continue;
    }
    const PromptLogprob& row = rows[i - 1];
    token_logprobs.push_back(row.logprob);
    json alternatives = json::object();
    for (const auto& [id, lp] : row.top_logprobs) alternatives[text(id)] = lp;
    if (!alternatives.contains(s)) alternatives[s] = row.logprob;  // the prompt's own token
    top.push_back(std::move(alternatives));
  }
  return {{"text_offset", offsets},
          {"token_logprobs", token_logprobs},
          {"tokens", tokens},
          {"top_logprobs", top}};
}

int64_t echo_text_offset(const std::string& prompt_text, const std::vector<int32_t>& prompt_ids,
                         const TokenText& text) {
  return prompt_ids.empty() ? text_length(prompt_text) : tokens_text_length(prompt_ids, text);
}

json completion_response(const ResponseHeader& header, const ApiRequest& request,
                         const std::vector<ChoiceOutput>& choices,
                         const std::vector<std::string>& prompt_texts,
                         const std::vector<int32_t>& prompt_tokens, const TokenText& text,
                         const std::vector<std::vector<int32_t>>& prompt_ids) {
  // best_of: the n best candidates are shown; usage counts every candidate's tokens, as
  // OpenAI's does.
  const bool ranked = request.candidates() > request.n;
  const std::vector<ChoiceOutput> best =
      ranked ? best_choices(choices, request.candidates(), request.n) : std::vector<ChoiceOutput>{};
  const std::vector<ChoiceOutput>& shown = ranked ? best : choices;
  json out_choices = json::array();
  int64_t completion_tokens = 0;
  for (const ChoiceOutput& c : choices) completion_tokens += c.completion_tokens;
  static const std::vector<int32_t> kNoIds;
  for (size_t i = 0; i < shown.size(); ++i) {
    const ChoiceOutput& c = shown[i];
    const size_t prompt = i / static_cast<size_t>(request.n);
    std::string body = c.text;
    int64_t offset = 0;
    if (request.echo && prompt < prompt_texts.size()) {
      body = prompt_texts[prompt] + body;
      offset = echo_text_offset(prompt_texts[prompt],
                                prompt < prompt_ids.size() ? prompt_ids[prompt] : kNoIds, text);
    }
    json logprobs = nullptr;
    if (request.params.logprobs >= 0) {
      logprobs = completion_logprobs_json(c.logprobs, text, offset);
      if (request.echo && prompt < prompt_ids.size()) {
        json head = echoed_prompt_logprobs(prompt_ids[prompt], c.prompt_logprobs, text);
        for (const char* key : {"text_offset", "token_logprobs", "tokens", "top_logprobs"})
          for (json& v : logprobs[key]) head[key].push_back(std::move(v));
        logprobs = std::move(head);
      }
    }
    json choice = {{"index", i},
                   {"text", body},
                   {"logprobs", logprobs},
                   {"finish_reason", finish_reason_json(c.finish_reason)},
                   {"stop_reason", stop_reason_json(c.stop_reason, c.stop_token_id)}};
    if (request.prompt_logprobs >= 0)
      choice["prompt_logprobs"] = prompt_logprobs_json(c.prompt_logprobs, text);
    out_choices.push_back(std::move(choice));
  }
  return response_json(header, "text_completion", std::move(out_choices), prompt_tokens,
                       completion_tokens);
}

std::vector<ChoiceOutput> best_choices(const std::vector<ChoiceOutput>& candidates, int32_t best_of,
                                       int32_t n) {
  std::vector<ChoiceOutput> best;
  const auto per_prompt = static_cast<size_t>(best_of);
  for (size_t first = 0; first + per_prompt <= candidates.size(); first += per_prompt) {
    std::vector<std::pair<double, size_t>> ranked;  // (-cumulative logprob, candidate)
    for (size_t i = first; i < first + per_prompt; ++i) {
      double sum = 0;
      for (const SampledToken& t : candidates[i].logprobs) sum += t.logprob;
      ranked.emplace_back(-sum, i);
    }
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t k = 0; k < static_cast<size_t>(n); ++k)
      best.push_back(candidates[ranked[k].second]);
  }
  return best;
}

json chat_response(const ResponseHeader& header, const ApiRequest& request,
                   const std::vector<ChoiceOutput>& choices,
                   const std::vector<int32_t>& prompt_tokens, const TokenText& text) {
  json out_choices = json::array();
  int64_t completion_tokens = 0;
  for (size_t i = 0; i < choices.size(); ++i) {
    const ChoiceOutput& c = choices[i];
    json logprobs = nullptr;
    if (request.params.logprobs >= 0) logprobs = chat_logprobs_json(c.logprobs, text);
    json message = {{"role", "assistant"}, {"content", c.text}, {"tool_calls", json::array()}};
    json finish = finish_reason_json(c.finish_reason);
    // Calls are read from an output that ended by itself; one cut by max_tokens stays text,
    // but a named function's output is its arguments however it ended (as streamed, and as
    // vLLM answers), with finish_reason "length" when cut.
    const bool named_cut =
        request.tool_choice == ToolChoice::kNamed && c.finish_reason == FinishReason::kLength;
    if (request.tool_choice != ToolChoice::kNone &&
        (c.finish_reason == FinishReason::kStop || named_cut)) {
      ParsedToolOutput parsed = parse_tool_calls(request.tool_choice, request.tool_call_parser,
                                                 request.tool_name, c.text);
      // parallel_tool_calls false: the first call only (with "auto" the model may write more;
      // vLLM drops them the same way).
      if (!request.parallel_tool_calls && parsed.calls.size() > 1) parsed.calls.resize(1);
      if (!parsed.calls.empty()) {
        message["content"] = parsed.content ? json(*parsed.content) : json(nullptr);
        message["tool_calls"] = chat_tool_calls_chunk(
            header, static_cast<int32_t>(i), parsed.calls)["choices"][0]["delta"]["tool_calls"];
        for (json& call : message["tool_calls"]) call.erase("index");
        if (!named_cut) finish = "tool_calls";
      }
    }
    out_choices.push_back({{"index", i},
                           {"message", std::move(message)},
                           {"logprobs", logprobs},
                           {"finish_reason", finish},
                           {"stop_reason", stop_reason_json(c.stop_reason, c.stop_token_id)}});
    completion_tokens += c.completion_tokens;
  }
  json out = response_json(header, "chat.completion", std::move(out_choices), prompt_tokens,
                           completion_tokens);
  // vLLM puts a chat's prompt logprobs beside its choices (they share the prompt).
  if (request.prompt_logprobs >= 0)
    out["prompt_logprobs"] = prompt_logprobs_json(
        choices.empty() ? std::vector<PromptLogprob>{} : choices.front().prompt_logprobs, text);
  return out;
}

json completion_chunk(const ResponseHeader& header, int32_t index, const std::string& text,
                      FinishReason finish, const json& logprobs, const json& stop_reason) {
  return {{"id", header.id},
          {"object", "text_completion"},
          {"created", header.created},
          {"model", header.model},
          {"choices", json::array({{{"index", index},
                                    {"text", text},
                                    {"logprobs", logprobs},
                                    {"finish_reason", finish_reason_json(finish)},
                                    {"stop_reason", stop_reason}}})}};
}

json completion_prompt_chunk(const ResponseHeader& header, const ApiRequest& request, int32_t index,
                             const std::string& prompt_text, const std::vector<int32_t>& prompt_ids,
                             const std::vector<PromptLogprob>& rows, const TokenText& text) {
  json logprobs = nullptr;
  if (request.echo && request.params.logprobs >= 0)
    logprobs = echoed_prompt_logprobs(prompt_ids, rows, text);
  json chunk = completion_chunk(header, index, request.echo ? prompt_text : std::string(),
                                FinishReason::kNone, logprobs);
  if (request.prompt_logprobs >= 0)
    chunk["choices"][0]["prompt_logprobs"] = prompt_logprobs_json(rows, text);
  return chunk;
}

bool completion_stream_waits_for_prompt(const ApiRequest& request) {
  return request.endpoint == Endpoint::kCompletions &&
         ((request.echo && request.params.logprobs >= 0) || request.prompt_logprobs >= 0);
}

namespace {
json chat_chunk(const ResponseHeader& header, int32_t index, json delta, const json& logprobs,
                FinishReason finish, const json& stop_reason = nullptr) {
  return {{"id", header.id},
          {"object", "chat.completion.chunk"},
          {"created", header.created},
          {"model", header.model},
          {"choices", json::array({{{"index", index},
                                    {"delta", std::move(delta)},
                                    {"logprobs", logprobs},
                                    {"finish_reason", finish_reason_json(finish)},
                                    {"stop_reason", stop_reason}}})}};
}
}  // namespace

json chat_role_chunk(const ResponseHeader& header, int32_t index) {
  return chat_chunk(header, index, {{"role", "assistant"}, {"content", ""}}, nullptr,
                    FinishReason::kNone);
}

json chat_content_chunk(const ResponseHeader& header, int32_t index, const std::string& content,
                        const json& logprobs) {
  return chat_chunk(header, index, {{"content", content}}, logprobs, FinishReason::kNone);
}

json chat_finish_chunk(const ResponseHeader& header, int32_t index, FinishReason finish,
                       const json& stop_reason) {
  return chat_chunk(header, index, json::object(), nullptr, finish, stop_reason);
}

std::string tool_call_id(const ResponseHeader& header, int32_t index, size_t k) {
  const size_t dash = header.id.find('-');
  const std::string base = dash == std::string::npos ? header.id : header.id.substr(dash + 1);
  return "call_" + base + "_" + std::to_string(index) + "_" + std::to_string(k);
}

json chat_tool_calls_chunk(const ResponseHeader& header, int32_t index,
                           const std::vector<ToolCall>& calls, int32_t first_index) {
  json list = json::array();
  for (size_t k = 0; k < calls.size(); ++k)
    list.push_back({{"index", first_index + static_cast<int32_t>(k)},
                    {"id", tool_call_id(header, index, k)},
                    {"type", "function"},
                    {"function", {{"name", calls[k].name}, {"arguments", calls[k].arguments}}}});
  return chat_chunk(header, index, {{"tool_calls", list}}, nullptr, FinishReason::kNone);
}

json chat_tool_call_start_chunk(const ResponseHeader& header, int32_t index, size_t call,
                                const std::string& name) {
  json delta = {{"index", call},
                {"id", tool_call_id(header, index, call)},
                {"type", "function"},
                {"function", {{"name", name}, {"arguments", ""}}}};
  return chat_chunk(header, index, {{"tool_calls", json::array({delta})}}, nullptr,
                    FinishReason::kNone);
}

json chat_tool_arguments_chunk(const ResponseHeader& header, int32_t index, size_t call,
                               const std::string& arguments) {
  json delta = {{"index", call}, {"function", {{"arguments", arguments}}}};
  return chat_chunk(header, index, {{"tool_calls", json::array({delta})}}, nullptr,
                    FinishReason::kNone);
}

json chat_tool_finish_chunk(const ResponseHeader& header, int32_t index) {
  json chunk = chat_chunk(header, index, json::object(), nullptr, FinishReason::kNone);
  chunk["choices"][0]["finish_reason"] = "tool_calls";
  return chunk;
}

json usage_chunk(const ResponseHeader& header, Endpoint endpoint, int64_t prompt_tokens,
                 int64_t completion_tokens) {
  return {{"id", header.id},
          {"object",
           endpoint == Endpoint::kChatCompletions ? "chat.completion.chunk" : "text_completion"},
          {"created", header.created},
          {"model", header.model},
          {"choices", json::array()},
          {"usage", usage_json(prompt_tokens, completion_tokens)}};
}

std::string dump_json(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& payload) {
  return "data: " + dump_json(payload) + "\n\n";
}

}  // namespace l2kv::server
