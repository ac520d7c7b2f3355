// The OpenAI API's request and response shapes, without sockets: parse and validate the JSON
// body of POST /v1/completions and /v1/chat/completions into engine requests
// (openai_protocol.cpp, with /tokenize and /detokenize), and build the response objects and
// streaming chunks from engine outputs (openai_response.cpp). Errors come out as ApiError with
// the HTTP status and OpenAI's error body, worded as vLLM words them.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "l2kv/engine/engine.h"
#include "l2kv/sampling/sampling_params.h"
#include "l2kv/server/tool_calls.h"

namespace l2kv {
class Tokenizer;
class ChatTemplate;
namespace structured {
class CompiledGrammar;
class GrammarCache;
}  // namespace structured
}  // namespace l2kv

namespace l2kv::server {

using json = nlohmann::ordered_json;

// An error answered to the client: {"error": {"message", "type", "param", "code"}}.
struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = "", std::string type = "",
           std::string code = "");
  int status;
  std::string message, type, param, code;  // empty param / code -> null
  json to_json() const;
};

// 400 invalid_request_error naming `param`.
[[noreturn]] void bad_request(const std::string& message, const std::string& param = "");

// Deepest nesting of arrays and objects a request (or JSON text inside one: a schema given as a
// string, a tool call's arguments) may have. Far beyond any real schema or message, and shallow
// enough that the code that copies, prints and compiles values level by level stays within a
// thread's stack.
constexpr int kMaxJsonDepth = 512;

// Parses JSON text from a request; nesting deeper than kMaxJsonDepth is a 400 naming `what`.
// Malformed text throws the JSON library's exception, for the caller to word.
json parse_json_text(const std::string& text, const std::string& what, const std::string& param);

inline constexpr int32_t kMaxChoices = 16;  // most `n` per request

// What the server knows when it validates a request.
struct ServerLimits {
  std::string served_model_name;
  int32_t max_model_len = 0;
  int64_t vocab_size = 0;
  // Compiles structured-output constraints for the model's vocabulary; null (no tokenizer):
  // requests for structured outputs are a 400.
  structured::GrammarCache* grammars = nullptr;
  // --tool-call-parser: how tool calls are found in a chat's output with tool_choice "auto"
  // (kNone: "auto" is refused; "required" and named functions need no parser).
  ToolCallParser tool_call_parser = ToolCallParser::kNone;
  // Sampling settings a request starts from (HttpServerOptions::default_sampling), and the most
  // tokens a request without max_tokens gets (HttpServerOptions::default_max_tokens).
  SamplingParams default_sampling{};
  std::optional<int32_t> default_max_tokens{};
};

enum class Endpoint : uint8_t { kCompletions, kChatCompletions };

// One prompt as given: text (tokenized later) or token ids.
struct PromptInput {
  std::string text;
  std::vector<int32_t> ids;
  bool is_ids = false;
};

// A parsed, validated request; prompts still to be tokenized (chat: messages to render).
struct ApiRequest {
  Endpoint endpoint = Endpoint::kCompletions;
  std::string model;
  std::vector<PromptInput> prompts;  // completions: one or more
  json messages;  // chat: [{role, content[, name]}], roles as templates know them
  SamplingParams params;
  bool max_tokens_given = false;  // else the default (completions: 16, chat: all that fits)
  int32_t n = 1;
  // Completions: candidates generated per prompt, of which the n with the highest cumulative
  // logprob are returned (best first); at least n, only n when streamed.
  int32_t best_of = 1;
  int32_t candidates() const { return best_of > n ? best_of : n; }
  bool echo = false;  // completions: the prompt before the completion
  // Completions: max_tokens 0 with echo: only the prompt (and its logprobs) is computed.
  bool prompt_only = false;
  int32_t prompt_logprobs = -1;  // vLLM's prompt_logprobs: -1 none, else top tokens per row
  std::string cache_salt;        // vLLM's: prefix-cache reuse only among requests that share it
  bool stream = false;
  bool include_usage = false;
  // vLLM's prompt fields: add_special_tokens (unset: completions add BOS, chat templates write
  // their own), truncate_prompt_tokens (keep the prompt's last k tokens; 0: all), and for chat
  // add_generation_prompt and chat_template_kwargs (more template variables, e.g. Qwen3's
  // enable_thinking).
  std::optional<bool> add_special_tokens;
  int32_t truncate_prompt_tokens = 0;
  bool add_generation_prompt = true;
  json chat_template_kwargs = json::object();
  // Structured outputs: response_format json_object / json_schema, or vLLM's
  // structured_outputs (json, regex, choice, grammar, json_object) and guided_json /
  // guided_regex / guided_choice / guided_grammar; null when the output is free.
  std::shared_ptr<const structured::CompiledGrammar> grammar;
  // Chat: `tools` as given (validated; null when none), tool_choice ("required" and a named
  // function are forced by `grammar`), the named function, parallel_tool_calls, and the
  // server's parser for "auto".
  json tools;
  ToolChoice tool_choice = ToolChoice::kNone;
  std::string tool_name;
  bool parallel_tool_calls = true;
  ToolCallParser tool_call_parser = ToolCallParser::kNone;
};

// Parses a request body as JSON; malformed JSON and numbers that overflow a double (1e400) are
// a 400, never an exception of the JSON library.
json parse_request_body(const std::string& body);

// Parse and validate a body (already parsed as JSON). Throw ApiError (400; 404 for an unknown
// model) for wrong types, missing fields and out-of-range values, for unknown fields and for
// fields l2kv does not implement (unless given the value l2kv honours anyway, see the README's
// Server section); hints (user, metadata, store, ...) are accepted and ignored.
ApiRequest parse_completion_request(const json& body, const ServerLimits& limits);
ApiRequest parse_chat_request(const json& body, const ServerLimits& limits);

// Applies max_model_len to one tokenized prompt: a prompt that does not leave room for one
// token, or prompt + max_tokens over the limit, is a 400; an unset max_tokens becomes all that
// fits (chat) or min(16, what fits) (completions), and at most `default_max_tokens` (the
// model's generation_config.json max_new_tokens) where that is set. Returns the max_tokens to
// use.
int32_t resolve_max_tokens(const ApiRequest& request, int32_t prompt_tokens, int32_t max_model_len,
                           std::optional<int32_t> default_max_tokens = std::nullopt);

// Tokenizes the prompts (chat: renders the messages with `chat_template`). Without a tokenizer
// only token-id prompts work; anything else is a 400 saying so.
std::vector<std::vector<int32_t>> tokenize_prompts(const ApiRequest& request,
                                                   const Tokenizer* tokenizer,
                                                   const ChatTemplate* chat_template);

// What a completion's echo shows of prompt `prompt` (tokenized as `ids`): the prompt the model
// saw. A text prompt as given, unless truncate_prompt_tokens cut it (then its kept tokens
// decoded); token ids decoded with their special tokens, as vLLM echoes them.
std::string echo_text(const ApiRequest& request, size_t prompt, const std::vector<int32_t>& ids,
                      const Tokenizer& tokenizer);

// POST /tokenize, vLLM's shapes. The body is {"model"?, "prompt": text, "add_special_tokens"
// (default true), "return_token_strs" (default false)} or, for a chat, {"model"?, "messages",
// "add_generation_prompt" (default true), "continue_final_message" (false only),
// "add_special_tokens" (default false: the template writes BOS), "return_token_strs"}. The
// answer is {"count", "max_model_len", "tokens", "token_strs" (null unless asked for: the
// vocabulary's own strings)}. Throws ApiError: 400 for wrong types, unknown fields or no
// tokenizer, 404 for another model.
json tokenize_response(const json& body, const ServerLimits& limits, const Tokenizer* tokenizer,
                       const ChatTemplate* chat_template);
// POST /detokenize: {"model"?, "tokens": [ids]} -> {"prompt": text} (special tokens kept, as
// vLLM). 400 for ids outside the vocabulary, wrong types, unknown fields or no tokenizer.
json detokenize_response(const json& body, const ServerLimits& limits, const Tokenizer* tokenizer);

// One choice's output, accumulated from the engine's RequestOutputs.
struct ChoiceOutput {
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<SampledToken> logprobs;
  std::vector<PromptLogprob> prompt_logprobs;  // one per prompt token after the first
  FinishReason finish_reason = FinishReason::kNone;
  std::string stop_reason;
  int32_t stop_token_id = -1;
  std::string error;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  bool finished = false;

  void append(const RequestOutput& output);
};

// A token's text for logprobs: the tokenizer's decoding of it as it reads inside a text (a
// SentencePiece "▁the" keeps its space), or "token_id:N" without a tokenizer.
using TokenText = std::function<std::string(int32_t)>;
TokenText token_text_for(const Tokenizer* tokenizer);

// vLLM's stop_reason: the stop token id (a number) or stop string that ended a choice; null
// otherwise (EOS, length).
json stop_reason_json(const std::string& reason, int32_t stop_token_id);
// "stop", "length", "abort" or "error"; null while unfinished.
json finish_reason_json(FinishReason reason);
json usage_json(int64_t prompt_tokens, int64_t completion_tokens);

// Characters (Unicode code points) of UTF-8 `text`: what completions' text_offset counts.
int64_t text_length(const std::string& text);
// The characters of the tokens' texts, one after another.
int64_t tokens_text_length(const std::vector<int32_t>& ids, const TokenText& text);

// Logprobs of `tokens` in OpenAI's shapes. Completions: {tokens, token_logprobs, top_logprobs,
// text_offset}: top_logprobs holds the sampled token beside the most likely ones (up to
// logprobs + 1 entries, as OpenAI and vLLM), offsets count characters from `text_offset`, each
// token's text after the one before (vLLM's). Chat: {content: [{token, logprob, bytes,
// top_logprobs: [{token, logprob, bytes}]}]}.
json completion_logprobs_json(const std::vector<SampledToken>& logprobs, const TokenText& text,
                              int64_t text_offset);
json chat_logprobs_json(const std::vector<SampledToken>& logprobs, const TokenText& text);

// Identity shared by a response and its chunks.
struct ResponseHeader {
  std::string id;  // "cmpl-..." or "chatcmpl-..."
  int64_t created = 0;
  std::string model;
};

// The prompt logprobs the engine is asked for: prompt_logprobs, or logprobs with echo (the
// larger when both are given); -1 for none.
int32_t engine_prompt_logprobs(const ApiRequest& request);

// vLLM's prompt_logprobs: [null, {"<id>": {"logprob", "rank", "decoded_token"}, ...}, ...], the
// prompt token first, then the most likely ones.
json prompt_logprobs_json(const std::vector<PromptLogprob>& rows, const TokenText& text);

// Completions logprobs of an echoed prompt `ids`: its first token with null logprob and
// top_logprobs (as OpenAI), then one entry per row (the prompt's token among its
// alternatives), text offsets from 0.
json echoed_prompt_logprobs(const std::vector<int32_t>& ids, const std::vector<PromptLogprob>& rows,
                            const TokenText& text);
// Where the generated tokens' text offsets start after an echoed prompt: the characters of its
// tokens' texts (so the offsets keep rising past the prompt's), or of its text without ids.
int64_t echo_text_offset(const std::string& prompt_text, const std::vector<int32_t>& prompt_ids,
                         const TokenText& text);

// Full responses. `choices` are in index order; `prompts_text` (echo) per prompt. With echo
// and logprobs, `prompt_ids` (per prompt) puts the prompt's tokens first in the logprobs (the
// first with null logprobs, as OpenAI), when given. With best_of above n, `choices` holds every
// candidate: the response shows best_choices() of them and its usage counts them all.
json completion_response(const ResponseHeader& header, const ApiRequest& request,
                         const std::vector<ChoiceOutput>& choices,
                         const std::vector<std::string>& prompt_texts,
                         const std::vector<int32_t>& prompt_tokens, const TokenText& text,
                         const std::vector<std::vector<int32_t>>& prompt_ids = {});
// best_of: of each prompt's `best_of` candidates (consecutive in `candidates`), the `n` with
// the highest sum of their sampled tokens' logprobs, best first (an earlier candidate wins a
// tie), prompt by prompt.
std::vector<ChoiceOutput> best_choices(const std::vector<ChoiceOutput>& candidates, int32_t best_of,
                                       int32_t n);
json chat_response(const ResponseHeader& header, const ApiRequest& request,
                   const std::vector<ChoiceOutput>& choices,
                   const std::vector<int32_t>& prompt_tokens, const TokenText& text);

// Streaming chunks. `logprobs` may be null; `stop_reason` (stop_reason_json) null but in the
// last chunk of a choice that met a stop string or token.
json completion_chunk(const ResponseHeader& header, int32_t index, const std::string& text,
                      FinishReason finish, const json& logprobs, const json& stop_reason = nullptr);
// A streamed completion's first chunk once the prompt's logprobs are known (echo with
// logprobs, or prompt_logprobs): the echoed prompt (with echo; else "") with its logprobs
// (echo with logprobs, `prompt_ids` its tokens) and the choice's vLLM prompt_logprobs (when
// asked for). The generated tokens follow in chunks of their own.
json completion_prompt_chunk(const ResponseHeader& header, const ApiRequest& request, int32_t index,
                             const std::string& prompt_text, const std::vector<int32_t>& prompt_ids,
                             const std::vector<PromptLogprob>& rows, const TokenText& text);
// Whether a streamed completion holds its first chunk for the prompt's logprobs.
bool completion_stream_waits_for_prompt(const ApiRequest& request);
// `role` first chunk: delta {"role": "assistant", "content": ""}; then content pieces; the
// last one carries finish_reason and an empty delta.
json chat_role_chunk(const ResponseHeader& header, int32_t index);
json chat_content_chunk(const ResponseHeader& header, int32_t index, const std::string& content,
                        const json& logprobs);
json chat_finish_chunk(const ResponseHeader& header, int32_t index, FinishReason finish,
                       const json& stop_reason = nullptr);
// Tool calls: a delta of `calls` (indexes from `first_index`, with id, type and the whole
// function); streamed, a call's first delta (its index, id, type and name, arguments "") and
// its arguments' later pieces (index and arguments only), as OpenAI streams them.
// `finish` "tool_calls" once the choice called tools.
json chat_tool_calls_chunk(const ResponseHeader& header, int32_t index,
                           const std::vector<ToolCall>& calls, int32_t first_index = 0);
json chat_tool_call_start_chunk(const ResponseHeader& header, int32_t index, size_t call,
                                const std::string& name);
json chat_tool_arguments_chunk(const ResponseHeader& header, int32_t index, size_t call,
                               const std::string& arguments);
json chat_tool_finish_chunk(const ResponseHeader& header, int32_t index);
// The id of call `k` of choice `index` of a response.
std::string tool_call_id(const ResponseHeader& header, int32_t index, size_t k);
json usage_chunk(const ResponseHeader& header, Endpoint endpoint, int64_t prompt_tokens,
                 int64_t completion_tokens);

// "data: <json>\n\n" (invalid UTF-8 replaced) and the closing "data: [DONE]\n\n".
std::string sse_event(const json& payload);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// Serializes with invalid UTF-8 replaced (a token may end inside a character).
std::string dump_json(const json& value);

}  // namespace l2kv::server
