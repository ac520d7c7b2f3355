#include "l2kv/server/openai_protocol.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <span>
#include <sstream>

#include "l2kv/chat/chat_template.h"
#include "l2kv/core/error.h"
#include "l2kv/structured/gbnf_grammar.h"
#include "l2kv/structured/grammar_cache.h"
#include "l2kv/structured/json_schema.h"
#include "l2kv/structured/regex_grammar.h"
#include "l2kv/tokenizer/regex.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv::server {
namespace {

std::string default_type(int status) {
  if (status == 401) return "authentication_error";
  if (status == 404) return "not_found_error";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

// A field: absent and null read the same (OpenAI clients send nulls for unset fields).
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void wrong_type(const char* name, const char* expected) {
  bad_request(std::string("'") + name + "' must be " + expected + ".", name);
}

std::optional<double> get_number(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_number()) wrong_type(name, "a number");
  const double d = v->get<double>();
  if (!std::isfinite(d)) wrong_type(name, "a finite number");
  return d;
}

// A sampling parameter's float, rounded away from zero: SamplingParams checks floats against
// bounds that floats hold exactly (0, 1, -2, 2, 100), and rounding to nearest could land a value
// just outside on a bound (top_p 1.00000001 -> 1) or a tiny one on zero (top_p 1e-300 -> 0).
// Away from zero keeps each value on its side of every such bound.
float to_param_float(double v) {
  float f = static_cast<float>(v);
  if (std::isfinite(f) && std::abs(static_cast<double>(f)) < std::abs(v))
    f = std::nextafter(f, v > 0 ? std::numeric_limits<float>::infinity()
                                : -std::numeric_limits<float>::infinity());
  return f;
}

std::optional<float> get_param_float(const json& body, const char* name) {
  if (const std::optional<double> v = get_number(body, name)) return to_param_float(*v);
  return std::nullopt;
}

std::optional<int64_t> get_integer(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  const auto out_of_range = [&](const std::string& value) {
    bad_request(
        std::string("'") + name + "' is out of range: " + value + " does not fit a 64-bit integer.",
        name);
  };
  if (v->is_number_unsigned() &&
      v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    out_of_range(std::to_string(v->get<uint64_t>()));
  if (v->is_number_integer()) return v->get<int64_t>();
  // 3.0 is an integer in JSON's eyes (pydantic agrees); 3.5 is not.
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d)) {
      if (std::fabs(d) < 9e15) return static_cast<int64_t>(d);
      out_of_range(v->dump());  // beyond 2^53 a double no longer holds every integer
    }
  }
  wrong_type(name, "an integer");
}

std::optional<bool> get_bool(const json& body, const char* name) {
  const json* v = field(body, name);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) wrong_type(name, "a boolean");
  return v->get<bool>();
}

int32_t to_int32(int64_t v, const char* name, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) {
    std::ostringstream m;
    m << "'" << name << "' must be in [" << lo << ", " << hi << "], got " << v << ".";
    bad_request(m.str(), name);
  }
  return static_cast<int32_t>(v);
}

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();

std::vector<int32_t> parse_token_ids(const json& list, const char* name, int64_t vocab_size) {
  std::vector<int32_t> ids;
  ids.reserve(list.size());
  for (const json& v : list) {
    if (!v.is_number_integer()) wrong_type(name, "a string, a list of strings or token ids");
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab_size) {
      std::ostringstream m;
      m << "Token id " << id << " is out of vocabulary (size " << vocab_size << ").";
      bad_request(m.str(), name);
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  if (ids.empty()) bad_request("The prompt must not be empty.", name);
  return ids;
}

void check_model(const json& body, const ServerLimits& limits, ApiRequest& r) {
  const json* model = field(body, "model");
  if (!model) {
    r.model = limits.served_model_name;
    return;
  }
  if (!model->is_string()) wrong_type("model", "a string");
  r.model = model->get<std::string>();
  if (r.model != limits.served_model_name)
    throw ApiError(404, "The model `" + r.model + "` does not exist.", "model",
                   "invalid_request_error", "model_not_found");
}

// Every request field l2kv knows, by endpoint. A field is implemented, a hint (it asks nothing
// of the answer: checked for its type, then not used), or unsupported: then only null or the
// values listed (what l2kv does anyway) are accepted, anything else is a 400 naming it. A name in
// no row is a 400 too ("Unrecognized request argument supplied"), so a typo never goes unnoticed.
enum class FieldKind : uint8_t { kImplemented, kHint, kUnsupported };
enum EndpointMask : uint8_t { kCompletionsOnly = 1, kChatOnly = 2, kBoth = 3 };
// What a hint holds: a string, or (metadata) an object of strings.
enum class HintShape : uint8_t { kString, kStringMap };

struct FieldRule {
  const char* name;
  uint8_t endpoints;
  FieldKind kind;
  std::vector<const char*> accepted = {};  // kUnsupported: JSON values l2kv honours as is
  const char* why = "";                    // kUnsupported: the end of the 400's message
  HintShape hint = HintShape::kString;     // kHint: the value's shape
};

const std::vector<FieldRule>& field_rules() {
  using enum FieldKind;
  static const std::vector<FieldRule> rules = {
      // OpenAI's completions and chat completions fields.
      {"model", kBoth, kImplemented},
      {"prompt", kCompletionsOnly, kImplemented},
      {"messages", kChatOnly, kImplemented},
      {"temperature", kBoth, kImplemented},
      {"top_p", kBoth, kImplemented},
      {"n", kBoth, kImplemented},
      {"stream", kBoth, kImplemented},
      {"stream_options", kBoth, kImplemented},
      {"stop", kBoth, kImplemented},
      {"max_tokens", kBoth, kImplemented},
      {"max_completion_tokens", kBoth, kImplemented},
      {"presence_penalty", kBoth, kImplemented},
      {"frequency_penalty", kBoth, kImplemented},
      {"logit_bias", kBoth, kImplemented},
      {"logprobs", kBoth, kImplemented},
      {"top_logprobs", kChatOnly, kImplemented},
      {"seed", kBoth, kImplemented},
      {"echo", kCompletionsOnly, kImplemented},
      {"best_of", kCompletionsOnly, kImplemented},
      {"user", kBoth, kHint},
      {"metadata", kChatOnly, kHint, {}, "", HintShape::kStringMap},
      {"store", kChatOnly, kUnsupported, {"false"}, "l2kv does not store completions."},
      {"safety_identifier", kChatOnly, kHint},
      {"prompt_cache_key", kChatOnly, kHint},
      {"suffix", kCompletionsOnly, kUnsupported, {}, "l2kv does not fill in the middle."},
      {"response_format", kBoth, kImplemented},
      {"tools", kChatOnly, kImplemented},
      {"tool_choice", kChatOnly, kImplemented},
      {"parallel_tool_calls", kChatOnly, kImplemented},
      {"functions", kChatOnly, kUnsupported, {"[]"}, "use 'tools' (functions is deprecated)."},
      {"function_call",
       kChatOnly,
       kUnsupported,
       {R"("none")"},
       "use 'tool_choice' (function_call is deprecated)."},
      {"modalities", kChatOnly, kUnsupported, {R"(["text"])"}, "only [\"text\"]."},
      {"audio", kChatOnly, kUnsupported, {}, "l2kv answers in text only."},
      {"prediction", kChatOnly, kUnsupported, {}, "l2kv has no predicted outputs."},
      {"reasoning_effort", kChatOnly, kUnsupported, {}, "l2kv does not control reasoning."},
      {"verbosity", kChatOnly, kUnsupported, {}, "l2kv does not control verbosity."},
      {"web_search_options", kChatOnly, kUnsupported, {}, "l2kv has no web search."},
      {"service_tier",
       kChatOnly,
       kUnsupported,
       {R"("auto")", R"("default")"},
       "l2kv has one tier (\"auto\" or \"default\")."},
      // vLLM's extra sampling and serving fields.
      {"top_k", kBoth, kImplemented},
      {"min_p", kBoth, kImplemented},
      {"repetition_penalty", kBoth, kImplemented},
      {"min_tokens", kBoth, kImplemented},
      {"ignore_eos", kBoth, kImplemented},
      {"stop_token_ids", kBoth, kImplemented},
      {"skip_special_tokens", kBoth, kImplemented},
      {"use_beam_search", kBoth, kUnsupported, {"false"}, "l2kv has no beam search."},
      {"length_penalty", kBoth, kUnsupported, {"1"}, "it applies to beam search only."},
      {"include_stop_str_in_output", kBoth, kImplemented},
      // Text is decoded as Hugging Face's fast tokenizers (and vLLM with them) decode it: shown
      // special tokens stand next to each other, without spaces, whichever value is given.
      {"spaces_between_special_tokens",
       kBoth,
       kUnsupported,
       {"true", "false"},
       "it takes true or false (shown special tokens are joined without spaces either way)."},
      {"truncate_prompt_tokens", kBoth, kImplemented},
      {"prompt_logprobs", kBoth, kImplemented},
      {"allowed_token_ids", kBoth, kImplemented},
      {"bad_words", kBoth, kUnsupported, {"[]"}, "use logit_bias for single tokens."},
      {"add_special_tokens", kBoth, kImplemented},
      {"add_generation_prompt", kChatOnly, kImplemented},
      {"continue_final_message",
       kChatOnly,
       kUnsupported,
       {"false"},
       "l2kv does not continue the final message."},
      {"echo", kChatOnly, kUnsupported, {"false"}, "chat completions never echo."},
      {"documents", kChatOnly, kUnsupported, {}, "l2kv passes no documents to the template."},
      {"chat_template", kChatOnly, kUnsupported, {}, "l2kv uses the model's chat template."},
      {"chat_template_kwargs", kChatOnly, kImplemented},
      {"mm_processor_kwargs", kBoth, kUnsupported, {}, "l2kv serves text-only models."},
      {"guided_json", kBoth, kImplemented},
      {"guided_regex", kBoth, kImplemented},
      {"guided_choice", kBoth, kImplemented},
      {"guided_grammar", kBoth, kImplemented},
      {"guided_decoding_backend",
       kBoth,
       kUnsupported,
       {},
       "l2kv has one structured-output backend of its own."},
      {"guided_whitespace_pattern",
       kBoth,
       kUnsupported,
       {},
       "whitespace in structured JSON is at most 16 spaces, tabs and newlines."},
      {"structural_tag", kBoth, kUnsupported, {}, "l2kv has no structural tags."},
      {"structured_outputs", kBoth, kImplemented},
      {"priority", kBoth, kUnsupported, {"0"}, "l2kv schedules first come, first served."},
      {"request_id", kBoth, kUnsupported, {}, "l2kv names its requests itself."},
      {"logits_processors", kBoth, kUnsupported, {}, "l2kv runs no custom logits processors."},
      {"return_tokens_as_token_ids",
       kBoth,
       kUnsupported,
       {"false"},
       "logprobs name tokens by their text."},
      {"return_token_ids", kBoth, kUnsupported, {"false"}, "responses carry text only."},
      {"cache_salt", kBoth, kImplemented},
      {"kv_transfer_params", kBoth, kUnsupported, {}, "l2kv does not transfer KV caches."},
      {"vllm_xargs", kBoth, kUnsupported, {}, "l2kv takes no extra arguments."},
  };
  return rules;
}

// Refuses unknown fields and unsupported values, before any field is read.
void check_field_names(const json& body, Endpoint endpoint) {
  const uint8_t mask = endpoint == Endpoint::kChatCompletions ? kChatOnly : kCompletionsOnly;
  for (const auto& [name, value] : body.items()) {
    const FieldRule* rule = nullptr;
    for (const FieldRule& r : field_rules())
      if ((r.endpoints & mask) != 0 && name == r.name) {
        rule = &r;
        break;
      }
    if (rule == nullptr) bad_request("Unrecognized request argument supplied: " + name, name);
    if (value.is_null()) continue;
    if (rule->kind == FieldKind::kHint) {
      if (rule->hint == HintShape::kString && !value.is_string())
        wrong_type(name.c_str(), "a string");
      if (rule->hint == HintShape::kStringMap &&
          (!value.is_object() ||
           !std::all_of(value.begin(), value.end(), [](const json& v) { return v.is_string(); })))
        wrong_type(name.c_str(), "an object of strings");
    }
    if (rule->kind != FieldKind::kUnsupported) continue;
    bool accepted = false;
    for (const char* literal : rule->accepted) accepted |= value == json::parse(literal);
    if (!accepted) bad_request("'" + name + "' is not supported: " + rule->why, name);
  }
}

// logit_bias: {"token id": bias, ...}; ids and values are checked by SamplingParams::validate.
void parse_logit_bias(const json& body, SamplingParams& p) {
  const json* bias = field(body, "logit_bias");
  if (!bias) return;
  if (!bias->is_object()) wrong_type("logit_bias", "an object mapping token ids to biases");
  if (bias->size() > static_cast<size_t>(kMaxLogitBias))
    bad_request("'logit_bias' may hold at most " + std::to_string(kMaxLogitBias) + " tokens, got " +
                    std::to_string(bias->size()) + ".",
                "logit_bias");
  for (const auto& [key, value] : bias->items()) {
    const bool digits =
        !key.empty() && key.size() <= 10 &&
        std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; });
    const int64_t id = digits ? std::stoll(key) : -1;
    if (!digits || id > kInt32Max)
      bad_request(
          "'logit_bias' keys must be token ids (non-negative integers), got \"" + key + "\".",
          "logit_bias");
    if (!value.is_number()) wrong_type("logit_bias", "an object mapping token ids to numbers");
    p.logit_bias.emplace_back(static_cast<int32_t>(id), to_param_float(value.get<double>()));
  }
  std::sort(p.logit_bias.begin(), p.logit_bias.end());
}

// A structured-output constraint as asked: the field it came from, its key in the grammar cache
// (kind and text) and how to compile it.
struct Constraint {
  std::string param;
  std::string key;
  std::function<structured::Grammar()> compile;
};

// A schema given as an object (or true/false) or, as vLLM allows, as a JSON string.
json schema_value(const json& v, const std::string& param) {
  if (v.is_object() || v.is_boolean()) return v;
  if (v.is_string()) {
    try {
      json parsed = parse_json_text(v.get<std::string>(), "'" + param + "'", param);
      if (parsed.is_object() || parsed.is_boolean()) return parsed;
    } catch (const json::exception&) {
    }
  }
  bad_request("'" + param + "' must be a JSON schema (an object).", param);
}

Constraint schema_constraint(const json& schema, const std::string& param) {
  return {param, "json_schema\n" + schema.dump(),
          [schema] { return structured::json_schema_grammar(schema); }};
}

Constraint json_object_constraint(const std::string& param) {
  return {param, "json_object", [] { return structured::json_object_grammar(); }};
}

// `name`: the field as the client wrote it (structured_outputs.regex), for messages.
Constraint regex_constraint(const json& v, const std::string& param, const std::string& name) {
  if (!v.is_string()) bad_request("'" + name + "' must be a string (a regex).", param);
  const std::string pattern = v.get<std::string>();
  return {param, "regex\n" + pattern, [pattern] { return structured::regex_grammar(pattern); }};
}

Constraint gbnf_constraint(const json& v, const std::string& param, const std::string& name) {
  if (!v.is_string()) bad_request("'" + name + "' must be a string (a GBNF grammar).", param);
  const std::string text = v.get<std::string>();
  return {param, "grammar\n" + text, [text] { return structured::gbnf_grammar(text); }};
}

Constraint choice_constraint(const json& v, const std::string& param, const std::string& name) {
  if (!v.is_array() || v.empty())
    bad_request("'" + name + "' must be a non-empty list of strings.", param);
  std::vector<std::string> choices;
  for (const json& c : v) {
    if (!c.is_string()) bad_request("'" + name + "' must be a non-empty list of strings.", param);
    choices.push_back(c.get<std::string>());
  }
  return {param, "choice\n" + v.dump(), [choices] { return structured::choice_grammar(choices); }};
}

// response_format: {"type": "text"}, {"type": "json_object"} or {"type": "json_schema",
// "json_schema": {"name", "description"?, "schema", "strict"?}} (OpenAI's shapes).
void response_format_constraint(const json& body, std::vector<Constraint>& out) {
  const json* rf = field(body, "response_format");
  if (!rf) return;
  const char* param = "response_format";
  if (!rf->is_object() || !rf->contains("type") || !(*rf)["type"].is_string())
    bad_request("'response_format' must be an object with a 'type'.", param);
  const std::string type = (*rf)["type"].get<std::string>();
  for (const auto& [key, value] : rf->items())
    if (key != "type" && !(key == "json_schema" && type == "json_schema") && !value.is_null())
      bad_request("'response_format." + key + "' is not supported with type '" + type + "'.",
                  param);
  if (type == "text") return;
  if (type == "json_object") {
    out.push_back(json_object_constraint(param));
    return;
  }
  if (type != "json_schema")
    bad_request("'response_format.type' must be 'text', 'json_object' or 'json_schema', got '" +
                    type + "'.",
                param);
  const json* js = field(*rf, "json_schema");
  if (!js || !js->is_object())
    bad_request("'response_format.json_schema' must be an object.", param);
  for (const auto& [key, value] : js->items()) {
    if (key == "name" || key == "description") {
      if (!value.is_null() && !value.is_string())
        bad_request("'response_format.json_schema." + key + "' must be a string.", param);
    } else if (key == "strict") {
      if (!value.is_null() && !value.is_boolean())
        bad_request("'response_format.json_schema.strict' must be a boolean.", param);
    } else if (key != "schema") {
      bad_request("'response_format.json_schema." + key + "' is not a field of json_schema.",
                  param);
    }
  }
  const json* schema = field(*js, "schema");
  if (!schema) bad_request("'response_format.json_schema.schema' is required.", param);
  out.push_back(schema_constraint(schema_value(*schema, "response_format"), param));
}

// vLLM's structured_outputs: {"json" | "regex" | "choice" | "grammar" | "json_object": ...}
// and the older guided_json / guided_regex / guided_choice / guided_grammar fields.
void vllm_constraints(const json& body, std::vector<Constraint>& out) {
  if (const json* so = field(body, "structured_outputs")) {
    const char* param = "structured_outputs";
    if (!so->is_object()) wrong_type(param, "an object");
    for (const auto& [key, value] : so->items()) {
      if (value.is_null()) continue;
      if (key == "json") {
        out.push_back(schema_constraint(schema_value(value, "structured_outputs.json"), param));
      } else if (key == "regex") {
        out.push_back(regex_constraint(value, param, "structured_outputs.regex"));
      } else if (key == "choice") {
        out.push_back(choice_constraint(value, param, "structured_outputs.choice"));
      } else if (key == "json_object") {
        if (!value.is_boolean())
          bad_request("'structured_outputs.json_object' must be a boolean.", param);
        if (value.get<bool>()) out.push_back(json_object_constraint(param));
      } else if (key == "disable_fallback" || key == "disable_additional_properties") {
        // No fallback backend, and no additional properties are ever generated.
        if (!value.is_boolean())
          bad_request("'structured_outputs." + key + "' must be a boolean.", param);
      } else if (key == "disable_any_whitespace") {
        if (value != false)
          bad_request(
              "'structured_outputs.disable_any_whitespace' is not supported: JSON may "
              "hold up to 16 spaces, tabs and newlines between tokens.",
              param);
      } else if (key == "grammar") {
        out.push_back(gbnf_constraint(value, param, "structured_outputs.grammar"));
      } else if (key == "structural_tag" || key == "whitespace_pattern") {
        bad_request("'structured_outputs." + key +
                        "' is not supported: l2kv constrains outputs by JSON schema, regex, "
                        "choice list or GBNF grammar.",
                    param);
      } else {
        bad_request("'structured_outputs." + key + "' is not a structured-outputs field.", param);
      }
    }
  }
  if (const json* v = field(body, "guided_json"))
    out.push_back(schema_constraint(schema_value(*v, "guided_json"), "guided_json"));
  if (const json* v = field(body, "guided_regex"))
    out.push_back(regex_constraint(*v, "guided_regex", "guided_regex"));
  if (const json* v = field(body, "guided_choice"))
    out.push_back(choice_constraint(*v, "guided_choice", "guided_choice"));
  if (const json* v = field(body, "guided_grammar"))
    out.push_back(gbnf_constraint(*v, "guided_grammar", "guided_grammar"));
}

// The request's structured-output constraint, compiled (or found in the cache); a constraint
// that does not compile is a 400 naming what is unsupported or wrong.
void parse_structured_outputs(const json& body, const ServerLimits& limits, ApiRequest& r) {
  std::vector<Constraint> constraints;
  response_format_constraint(body, constraints);
  vllm_constraints(body, constraints);
  if (constraints.empty()) return;
  if (constraints.size() > 1)
    bad_request("Only one structured-output constraint per request: got '" + constraints[0].param +
                    "' and '" + constraints[1].param + "'.",
                constraints[1].param);
  const Constraint& c = constraints.front();
  if (!limits.grammars)
    bad_request("'" + c.param +
                    "' needs the model's tokenizer.json (structured outputs constrain tokens by "
                    "their text), and this model folder has none.",
                c.param);
  try {
    r.grammar = limits.grammars->get(c.key, c.compile);
  } catch (const Error& e) {
    bad_request("'" + c.param + "' cannot be used: " + e.what(), c.param);
  }
}

// The fields both endpoints share: sampling, stopping, n, stream.
void parse_common(const json& body, const ServerLimits& limits, ApiRequest& r) {
  if (!body.is_object()) bad_request("The request body must be a JSON object.");
  check_field_names(body, r.endpoint);
  check_model(body, limits, r);
  SamplingParams& p = r.params;
  // The model's defaults (generation_config.json) for what the request leaves out.
  p.temperature = limits.default_sampling.temperature;
  p.top_p = limits.default_sampling.top_p;
  p.top_k = limits.default_sampling.top_k;
  p.min_p = limits.default_sampling.min_p;
  p.repetition_penalty = limits.default_sampling.repetition_penalty;
  if (auto v = get_param_float(body, "temperature")) p.temperature = *v;
  if (auto v = get_param_float(body, "top_p")) p.top_p = *v;
  if (auto v = get_integer(body, "top_k")) p.top_k = to_int32(*v, "top_k", -1, kInt32Max);
  if (auto v = get_param_float(body, "min_p")) p.min_p = *v;
  if (auto v = get_param_float(body, "repetition_penalty")) p.repetition_penalty = *v;
  if (auto v = get_param_float(body, "presence_penalty")) p.presence_penalty = *v;
  if (auto v = get_param_float(body, "frequency_penalty")) p.frequency_penalty = *v;
  if (auto v = get_integer(body, "seed")) p.seed = static_cast<uint64_t>(*v);
  if (auto v = get_integer(body, "min_tokens"))
    p.min_tokens = to_int32(*v, "min_tokens", 0, kInt32Max);
  if (auto v = get_bool(body, "ignore_eos")) p.ignore_eos = *v;
  if (auto v = get_bool(body, "skip_special_tokens")) p.skip_special_tokens = *v;
  if (auto v = get_bool(body, "include_stop_str_in_output")) p.include_stop_str_in_output = *v;
  r.add_special_tokens = get_bool(body, "add_special_tokens");
  if (auto v = get_integer(body, "truncate_prompt_tokens")) {
    // vLLM's: the last k tokens of the prompt; -1: as many as the model takes.
    if (*v == -1)
      r.truncate_prompt_tokens = limits.max_model_len;
    else
      r.truncate_prompt_tokens =
          to_int32(*v, "truncate_prompt_tokens", 1,
                   limits.max_model_len > 0 ? limits.max_model_len : kInt32Max);
  }
  parse_logit_bias(body, p);
  parse_structured_outputs(body, limits, r);

  if (const json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      p.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      for (const json& s : *stop) {
        if (!s.is_string()) wrong_type("stop", "a string or a list of strings");
        p.stop.push_back(s.get<std::string>());
      }
    } else {
      wrong_type("stop", "a string or a list of strings");
    }
  }
  if (const json* ids = field(body, "stop_token_ids")) {
    if (!ids->is_array()) wrong_type("stop_token_ids", "a list of token ids");
    for (const json& v : *ids) {
      if (!v.is_number_integer()) wrong_type("stop_token_ids", "a list of token ids");
      const int64_t id = v.get<int64_t>();
      p.stop_token_ids.push_back(to_int32(id, "stop_token_ids", 0, limits.vocab_size - 1));
    }
  }
  if (const json* ids = field(body, "allowed_token_ids")) {
    if (!ids->is_array()) wrong_type("allowed_token_ids", "a list of token ids");
    if (ids->empty()) bad_request("allowed_token_ids must not be empty.", "allowed_token_ids");
    for (const json& v : *ids) {
      if (!v.is_number_integer()) wrong_type("allowed_token_ids", "a list of token ids");
      const int64_t id = v.get<int64_t>();
      p.allowed_token_ids.push_back(to_int32(id, "allowed_token_ids", 0, limits.vocab_size - 1));
    }
  }

  if (auto v = get_integer(body, "n")) {
    if (*v < 1) bad_request("'n' must be at least 1, got " + std::to_string(*v) + ".", "n");
    if (*v > kMaxChoices)
      bad_request("'n' must be at most " + std::to_string(kMaxChoices) + " on this server, got " +
                      std::to_string(*v) + ".",
                  "n");
    r.n = static_cast<int32_t>(*v);
  }
  if (auto v = get_bool(body, "stream")) r.stream = *v;
  if (const json* salt = field(body, "cache_salt")) {
    if (!salt->is_string() || salt->get_ref<const std::string&>().empty())
      wrong_type("cache_salt", "a non-empty string");
    r.cache_salt = salt->get<std::string>();
  }
  if (auto v = get_integer(body, "prompt_logprobs"))
    r.prompt_logprobs = to_int32(*v, "prompt_logprobs", 0, kMaxLogprobs);
  // A streamed completion carries them in its first chunk; a chat has no chunk for them.
  if (r.stream && r.prompt_logprobs >= 0 && r.endpoint == Endpoint::kChatCompletions)
    bad_request("'prompt_logprobs' is not supported with stream on chat completions.",
                "prompt_logprobs");
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", "an object");
    if (!r.stream)
      bad_request("'stream_options' is only allowed when 'stream' is true.", "stream_options");
    for (const auto& [name, value] : so->items())
      if (name != "include_usage" && !value.is_null())
        bad_request("'stream_options." + name + "' is not supported: only include_usage.",
                    "stream_options");
    if (auto v = get_bool(*so, "include_usage")) r.include_usage = *v;
  }

  // max_completion_tokens is the newer name; either may be given.
  std::optional<int64_t> max_tokens = get_integer(body, "max_completion_tokens");
  if (!max_tokens) max_tokens = get_integer(body, "max_tokens");
  if (max_tokens) {
    const char* name =
        field(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if (*max_tokens == 0 && r.endpoint == Endpoint::kCompletions) {
      r.prompt_only = true;  // with echo only: parse_completion checks
      *max_tokens = 1;
    }
    if (*max_tokens < 1 || *max_tokens > kInt32Max)
      bad_request(std::string("'") + name + "' must be in [1, " + std::to_string(kInt32Max) +
                      "], got " + std::to_string(*max_tokens) + ".",
                  name);
    p.max_tokens = static_cast<int32_t>(*max_tokens);
    r.max_tokens_given = true;
  }
}

// chat_template_kwargs: more variables for the chat template (an object; empty when absent).
json template_kwargs(const json& body) {
  json out = json::object();
  if (const json* kwargs = field(body, "chat_template_kwargs")) {
    if (!kwargs->is_object()) wrong_type("chat_template_kwargs", "an object");
    for (const auto& [key, value] : kwargs->items()) {
      // The request's own fields reach the template under these names.
      if (key == "messages" || key == "tools" || key == "add_generation_prompt")
        bad_request("chat_template_kwargs may not set '" + key + "'; use the request field.",
                    "chat_template_kwargs");
      out[key] = value;
    }
  }
  return out;
}

// SamplingParams::validate's words, as a 400 naming the field it names; and the fields a
// constrained output cannot take.
void validate_params(const ApiRequest& r, const ServerLimits& limits) {
  SamplingParams p = r.params;
  if (!r.max_tokens_given) p.max_tokens = std::max(p.max_tokens, p.min_tokens);
  try {
    p.validate(limits.vocab_size);
  } catch (const Error& e) {
    const std::string message = e.what();
    const auto space = message.find(' ');
    bad_request(message, message.substr(0, space));
  }
  // The engine refuses these too; here the 400 names the field.
  const char* constrained =
      " is not supported with a constrained output (response_format, structured_outputs, "
      "guided_*, or tool_choice \"required\" or a named function).";
  if (r.grammar && p.ignore_eos)
    bad_request(std::string("'ignore_eos'") + constrained, "ignore_eos");
  if (r.grammar && p.min_tokens > 0)
    bad_request(std::string("'min_tokens'") + constrained, "min_tokens");
}

std::string content_to_text(const json& content, size_t index) {
  if (content.is_string()) return content.get<std::string>();
  std::string text;
  for (const json& part : content) {
    if (!part.is_object() || !part.contains("type") || part["type"] != "text" ||
        !part.contains("text") || !part["text"].is_string())
      bad_request("messages[" + std::to_string(index) +
                      "].content: only text parts ({\"type\": \"text\", \"text\": ...}) are "
                      "supported.",
                  "messages");
    if (!text.empty()) text += "\n";
    text += part["text"].get<std::string>();
  }
  return text;
}

}  // namespace

ApiError::ApiError(int status_, std::string message_, std::string param_, std::string type_,
                   std::string code_)
    : std::runtime_error(message_),
      status(status_),
      message(std::move(message_)),
      type(type_.empty() ? default_type(status_) : std::move(type_)),
      param(std::move(param_)),
      code(std::move(code_)) {}

json ApiError::to_json() const {
  json error = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) error["param"] = param;
  if (!code.empty()) error["code"] = code;
  return {{"error", error}};
}

void bad_request(const std::string& message, const std::string& param) {
  throw ApiError(400, message, param);
}

json parse_json_text(const std::string& text, const std::string& what, const std::string& param) {
  // nlohmann's parser keeps its own stack, but copying, printing and compiling a value recurse
  // once per level: a body of a few hundred KB nested 100,000 deep would overflow the thread's
  // stack. Refused while parsing, before any of that.
  const json::parser_callback_t depth_limit = [&](int depth, json::parse_event_t, json&) {
    if (depth > kMaxJsonDepth)
      bad_request(what + " nests arrays and objects deeper than " + std::to_string(kMaxJsonDepth) +
                      " levels.",
                  param);
    return true;
  };
  return json::parse(text, depth_limit);
}

json parse_request_body(const std::string& body) {
  try {
    return parse_json_text(body, "The request body", "");
  } catch (const json::out_of_range& e) {
    // 406: a number that overflows a double (1e400).
    bad_request(std::string("The request body has a number out of range: ") + e.what());
  } catch (const json::exception& e) {
    bad_request(std::string("The request body is not valid JSON: ") + e.what());
  }
}

namespace {

// Runs a parser; a JSON library error on an unexpected shape becomes a 400, never a 500.
template <typename F>
ApiRequest guarded_parse(F parse) {
  try {
    return parse();
  } catch (const json::exception& e) {
    bad_request(std::string("The request has a field of an unexpected type: ") + e.what());
  }
}

ApiRequest parse_completion(const json& body, const ServerLimits& limits) {
  ApiRequest r;
  r.endpoint = Endpoint::kCompletions;
  parse_common(body, limits, r);
  const json* prompt = field(body, "prompt");
  if (!prompt) bad_request("'prompt' is required.", "prompt");
  const char* kinds = "a string, a list of strings, a list of token ids or a list of lists of ids";
  if (prompt->is_string()) {
    r.prompts.push_back({prompt->get<std::string>(), {}, false});
  } else if (prompt->is_array()) {
    if (prompt->empty()) bad_request("'prompt' must not be empty.", "prompt");
    const json& first = prompt->front();
    if (first.is_number_integer()) {
      r.prompts.push_back({"", parse_token_ids(*prompt, "prompt", limits.vocab_size), true});
    } else {
      for (const json& item : *prompt) {
        if (item.is_string())
          r.prompts.push_back({item.get<std::string>(), {}, false});
        else if (item.is_array())
          r.prompts.push_back({"", parse_token_ids(item, "prompt", limits.vocab_size), true});
        else
          wrong_type("prompt", kinds);
      }
    }
  } else {
    wrong_type("prompt", kinds);
  }
  if (auto v = get_bool(body, "echo")) r.echo = *v;
  if (r.prompt_only && !r.echo)
    bad_request("'max_tokens' must be at least 1, got 0 (0 only with echo).", "max_tokens");
  if (auto v = get_integer(body, "logprobs"))
    r.params.logprobs = to_int32(*v, "logprobs", 0, kMaxLogprobs);
  if (field(body, "suffix")) bad_request("'suffix' is not supported.", "suffix");
  if (auto v = get_integer(body, "best_of")) {
    if (*v < r.n)
      bad_request("'best_of' must be at least n (" + std::to_string(r.n) + "), got " +
                      std::to_string(*v) + ".",
                  "best_of");
    if (*v > kMaxChoices)
      bad_request("'best_of' must be at most " + std::to_string(kMaxChoices) +
                      " on this server, got " + std::to_string(*v) + ".",
                  "best_of");
    // Which candidates are best is known only when all have finished.
    if (r.stream && *v > r.n)
      bad_request("'best_of' greater than n is not supported with stream.", "best_of");
    r.best_of = static_cast<int32_t>(*v);
  }
  validate_params(r, limits);
  return r;
}

// The roles a chat template knows. "developer" is OpenAI's newer name for "system".
const char* template_role(const std::string& role) {
  if (role == "system" || role == "developer") return "system";
  if (role == "user") return "user";
  if (role == "assistant") return "assistant";
  if (role == "tool") return "tool";
  return nullptr;
}

// An assistant message's tool_calls for the template: [{id, type, function: {name,
// arguments}}], arguments as an object where the JSON string parses (templates write them with
// tojson, as Hugging Face's do).
json parse_message_tool_calls(const json& value, const std::string& where) {
  const std::string bad = where + ".tool_calls must be a list of {id, type: \"function\", " +
                          "function: {name, arguments}}.";
  if (!value.is_array()) bad_request(bad, "messages");
  json out = json::array();
  for (const json& call : value) {
    if (!call.is_object() || !call.contains("function") || !call["function"].is_object() ||
        (call.contains("type") && call["type"] != "function"))
      bad_request(bad, "messages");
    const json& f = call["function"];
    if (!f.contains("name") || !f["name"].is_string()) bad_request(bad, "messages");
    json arguments = json::object();
    if (f.contains("arguments") && f["arguments"].is_string()) {
      // The template is given the arguments as JSON (vLLM parses them too).
      try {
        arguments = parse_json_text(f["arguments"].get<std::string>(),
                                    where + ".tool_calls[].function.arguments", "messages");
      } catch (const json::exception&) {
        bad_request(where + ".tool_calls[].function.arguments is not valid JSON.", "messages");
      }
    } else if (f.contains("arguments") && f["arguments"].is_object()) {
      arguments = f["arguments"];
    } else if (f.contains("arguments")) {
      // A number, list, boolean or null was read as {} and the template shown no arguments.
      bad_request(where + ".tool_calls[].function.arguments must be a string of JSON (or an " +
                      "object), got " + std::string(f["arguments"].type_name()) + ".",
                  "messages");
    }
    json entry = {{"type", "function"},
                  {"function", {{"name", f["name"]}, {"arguments", arguments}}}};
    if (call.contains("id") && call["id"].is_string()) entry["id"] = call["id"];
    out.push_back(std::move(entry));
  }
  return out;
}

// One message, checked and reduced to what the template is given: role, content, name.
json parse_message(const json& m, size_t i) {
  const std::string where = "messages[" + std::to_string(i) + "]";
  if (!m.is_object()) bad_request(where + " must be an object.", "messages");
  if (!m.contains("role") || !m["role"].is_string())
    bad_request(where + ".role must be a string.", "messages");
  const std::string role = m["role"].get<std::string>();
  const char* as = template_role(role);
  if (role == "function")
    bad_request(where + ".role 'function' is not supported: use 'tool' (function is deprecated).",
                "messages");
  if (as == nullptr)
    bad_request(
        where + ".role '" + role + "' is not a role: system, developer, user, assistant or tool.",
        "messages");
  json out = {{"role", as}};
  for (const auto& [key, value] : m.items()) {
    if (key == "role") continue;
    if (key == "content") {
      if (value.is_null()) continue;
      if (!value.is_string() && !value.is_array())
        bad_request(where + ".content must be a string or a list of parts.", "messages");
      out["content"] = content_to_text(value, i);
    } else if (key == "name") {
      if (!value.is_null() && !value.is_string())
        bad_request(where + ".name must be a string.", "messages");
      if (value.is_string()) out["name"] = value;
    } else if (key == "tool_calls") {
      if (value.is_null() || (value.is_array() && value.empty())) continue;
      if (role != "assistant")
        bad_request(where + ".tool_calls: only assistant messages call tools.", "messages");
      out["tool_calls"] = parse_message_tool_calls(value, where);
    } else if (key == "tool_call_id") {
      if (!value.is_null() && !value.is_string())
        bad_request(where + ".tool_call_id must be a string.", "messages");
      if (value.is_string()) out["tool_call_id"] = value;
    } else if (key == "function_call") {
      if (!value.is_null())
        bad_request(where + ".function_call is not supported: use tool_calls.", "messages");
    } else if (key == "refusal") {
      if (!value.is_null()) bad_request(where + ".refusal is not supported.", "messages");
    } else {
      bad_request(where + ": unrecognized message field '" + key + "'.", "messages");
    }
  }
  if (role == "tool" && !out.contains("tool_call_id"))
    bad_request(where + ".tool_call_id is required in a tool message (the call it answers).",
                "messages");
  if (!out.contains("content")) {
    // An assistant message that only calls tools has no content.
    if (!out.contains("tool_calls")) bad_request(where + ".content is required.", "messages");
    out["content"] = "";
  }
  return out;
}

// tools: [{"type": "function", "function": {"name", "description"?, "parameters"?,
// "strict"?}}], tool_choice and parallel_tool_calls. A forced choice ("required", a named
// function) compiles its grammar here.
void parse_tools(const json& body, const ServerLimits& limits, ApiRequest& r) {
  const char* bad =
      "'tools' must be a list of {\"type\": \"function\", \"function\": {\"name\", "
      "\"description\", \"parameters\"}}.";
  std::vector<std::string> names;
  if (const json* tools = field(body, "tools")) {
    if (!tools->is_array()) bad_request(bad, "tools");
    for (const json& t : *tools) {
      if (!t.is_object() || t.value("type", "") != "function" || !t.contains("function") ||
          !t["function"].is_object())
        bad_request(bad, "tools");
      for (const auto& [key, value] : t.items())
        if (key != "type" && key != "function")
          bad_request("'tools[]." + key + "' is not a field of a tool.", "tools");
      const json& f = t["function"];
      for (const auto& [key, value] : f.items())
        if (key != "name" && key != "description" && key != "parameters" && key != "strict")
          bad_request("'tools[].function." + key + "' is not a field of a function.", "tools");
      if (!f.contains("name") || !f["name"].is_string() || f["name"].get<std::string>().empty())
        bad_request("'tools[].function.name' must be a non-empty string.", "tools");
      if (f.contains("strict") && !f["strict"].is_boolean() && !f["strict"].is_null())
        bad_request("'tools[].function.strict' must be a boolean.", "tools");
      const std::string name = f["name"].get<std::string>();
      if (std::find(names.begin(), names.end(), name) != names.end())
        bad_request("'tools' names the function '" + name + "' twice.", "tools");
      if (f.contains("parameters") && !f["parameters"].is_null() && !f["parameters"].is_object())
        bad_request("'tools[].function.parameters' must be a JSON schema (an object).", "tools");
      // A call's arguments are an object (a schema without "type" is read as one).
      if (f.contains("parameters") && f["parameters"].is_object() &&
          f["parameters"].contains("type") && f["parameters"]["type"] != "object")
        bad_request("'tools[].function.parameters' of '" + f["name"].get<std::string>() +
                        "' must describe an object (\"type\": \"object\"): a call's arguments "
                        "are one.",
                    "tools");
      names.push_back(name);
    }
    if (!tools->empty()) r.tools = *tools;
  }
  if (auto v = get_bool(body, "parallel_tool_calls")) r.parallel_tool_calls = *v;
  r.tool_choice = names.empty() ? ToolChoice::kNone : ToolChoice::kAuto;
  if (const json* tc = field(body, "tool_choice")) {
    const char* kinds =
        "'tool_choice' must be \"none\", \"auto\", \"required\" or "
        "{\"type\": \"function\", \"function\": {\"name\"}}.";
    if (tc->is_string()) {
      const std::string c = tc->get<std::string>();
      if (c == "none")
        r.tool_choice = ToolChoice::kNone;
      else if (c == "auto")
        r.tool_choice = ToolChoice::kAuto;
      else if (c == "required")
        r.tool_choice = ToolChoice::kRequired;
      else
        bad_request(kinds, "tool_choice");
    } else if (tc->is_object() && tc->size() == 2 && tc->value("type", "") == "function" &&
               tc->contains("function") && (*tc)["function"].is_object() &&
               (*tc)["function"].size() == 1 && (*tc)["function"].contains("name") &&
               (*tc)["function"]["name"].is_string()) {  // nothing else in either object
      r.tool_choice = ToolChoice::kNamed;
      r.tool_name = (*tc)["function"]["name"].get<std::string>();
    } else {
      bad_request(kinds, "tool_choice");
    }
    if (r.tool_choice != ToolChoice::kNone && names.empty())
      bad_request("'tool_choice' other than \"none\" needs 'tools'.", "tool_choice");
    if (r.tool_choice == ToolChoice::kNamed &&
        std::find(names.begin(), names.end(), r.tool_name) == names.end())
      bad_request(
          "'tool_choice' names the function '" + r.tool_name + "', which is not in 'tools'.",
          "tool_choice");
  }
  r.tool_call_parser = limits.tool_call_parser;
  if (r.tool_choice == ToolChoice::kAuto && limits.tool_call_parser == ToolCallParser::kNone)
    bad_request(
        "'tool_choice' \"auto\" (the default with tools) needs the server started with "
        "--tool-call-parser (hermes, llama3_json or mistral); \"required\", a named "
        "function and \"none\" work without one.",
        "tool_choice");
  // vLLM's mistral parser reads the [TOOL_CALLS] special token from the text.
  if (r.tool_choice == ToolChoice::kAuto && limits.tool_call_parser == ToolCallParser::kMistral)
    r.params.skip_special_tokens = false;
  if (r.tool_choice != ToolChoice::kRequired && r.tool_choice != ToolChoice::kNamed) return;
  if (r.grammar)
    bad_request(
        "'tool_choice' \"required\" or a named function cannot be combined with another "
        "structured-output constraint.",
        "tool_choice");
  if (!limits.grammars)
    bad_request(
        "'tool_choice' \"required\" or a named function needs the model's "
        "tokenizer.json, and this model folder has none.",
        "tool_choice");
  const json schema =
      forced_tool_call_schema(r.tools, r.tool_choice, r.tool_name, r.parallel_tool_calls);
  try {
    r.grammar = limits.grammars->get("json_schema\n" + schema.dump(),
                                     [schema] { return structured::json_schema_grammar(schema); });
  } catch (const Error& e) {
    bad_request(std::string("'tools' cannot be used: ") + e.what(), "tools");
  }
}

ApiRequest parse_chat(const json& body, const ServerLimits& limits) {
  ApiRequest r;
  r.endpoint = Endpoint::kChatCompletions;
  parse_common(body, limits, r);
  const json* messages = field(body, "messages");
  if (!messages) bad_request("'messages' is required.", "messages");
  if (!messages->is_array() || messages->empty())
    bad_request("'messages' must be a non-empty list of messages.", "messages");
  r.messages = json::array();
  for (size_t i = 0; i < messages->size(); ++i)
    r.messages.push_back(parse_message((*messages)[i], i));
  parse_tools(body, limits, r);
  r.add_generation_prompt = get_bool(body, "add_generation_prompt").value_or(true);
  r.chat_template_kwargs = template_kwargs(body);
  const bool logprobs = get_bool(body, "logprobs").value_or(false);
  const auto top = get_integer(body, "top_logprobs");
  if (top && !logprobs)
    bad_request("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs");
  if (logprobs) r.params.logprobs = top ? to_int32(*top, "top_logprobs", 0, kMaxLogprobs) : 0;
  validate_params(r, limits);
  return r;
}

}  // namespace

ApiRequest parse_completion_request(const json& body, const ServerLimits& limits) {
  return guarded_parse([&] { return parse_completion(body, limits); });
}

ApiRequest parse_chat_request(const json& body, const ServerLimits& limits) {
  return guarded_parse([&] { return parse_chat(body, limits); });
}

int32_t resolve_max_tokens(const ApiRequest& request, int32_t prompt_tokens, int32_t max_model_len,
                           std::optional<int32_t> default_max_tokens) {
  const int64_t room = static_cast<int64_t>(max_model_len) - prompt_tokens;
  const char* what = request.endpoint == Endpoint::kChatCompletions ? "messages" : "prompt";
  if (room < 1) {
    std::ostringstream m;
    m << "This model's maximum context length is " << max_model_len << " tokens. However, your "
      << what << " has " << prompt_tokens << " tokens, which leaves no room for the completion."
      << " Please reduce the length of the " << what << ".";
    bad_request(m.str(), request.endpoint == Endpoint::kChatCompletions ? "messages" : "prompt");
  }
  if (!request.max_tokens_given) {
    // vLLM's default max_tokens is what the context leaves; min_tokens may raise ours up to it.
    if (request.params.min_tokens > room) {
      std::ostringstream m;
      m << "min_tokens must be <= the " << room << " tokens this model's maximum context length ("
        << max_model_len << ") leaves after the " << prompt_tokens << "-token " << what << ", got "
        << request.params.min_tokens << ".";
      bad_request(m.str(), "min_tokens");
    }
    int64_t fallback = request.endpoint == Endpoint::kCompletions ? 16 : room;
    if (default_max_tokens) fallback = std::min<int64_t>(fallback, *default_max_tokens);
    return static_cast<int32_t>(
        std::max<int64_t>(std::min(fallback, room), request.params.min_tokens));
  }
  if (request.params.max_tokens > room) {
    std::ostringstream m;
    m << "This model's maximum context length is " << max_model_len
      << " tokens. However, you requested " << prompt_tokens + int64_t{request.params.max_tokens}
      << " tokens (" << prompt_tokens << " in the " << what << ", " << request.params.max_tokens
      << " for the completion). Please reduce the length of the " << what << " or completion.";
    bad_request(m.str(), "max_tokens");
  }
  return request.params.max_tokens;
}

namespace {

// vLLM's truncate_prompt_tokens: keep the last `keep` tokens (0: all).
void truncate_prompt(std::vector<int32_t>& ids, int32_t keep) {
  if (keep > 0 && ids.size() > static_cast<size_t>(keep)) ids.erase(ids.begin(), ids.end() - keep);
}

// The prompt's token ids. A text too much for the pre-tokenizer's regex (PCRE2's match or
// depth limit reached on it) is the request's problem: a 400 naming the field, where it was a
// 500. Other tokenizer failures stay the server's.
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, const std::string& text,
                                   bool add_special_tokens, const std::string& param) {
  try {
    return tokenizer.encode(text, add_special_tokens);
  } catch (const RegexLimitError& e) {
    bad_request(std::string("The prompt could not be tokenized: ") + e.what(), param);
  }
}

}  // namespace

std::vector<std::vector<int32_t>> tokenize_prompts(const ApiRequest& request,
                                                   const Tokenizer* tokenizer,
                                                   const ChatTemplate* chat_template) {
  std::vector<std::vector<int32_t>> out;
  if (request.endpoint == Endpoint::kChatCompletions) {
    if (!tokenizer || !chat_template)
      bad_request(
          "Chat completions need the model's tokenizer.json (and chat template); this model "
          "folder has none. Use /v1/completions with token ids.",
          "messages");
    ChatRequest chat;
    chat.messages = request.messages;
    chat.tools = request.tools;  // rendered by the template, whatever tool_choice says
    chat.add_generation_prompt = request.add_generation_prompt;
    for (const auto& [key, value] : request.chat_template_kwargs.items()) chat.extra[key] = value;
    std::string text;
    try {
      text = chat_template->render(chat);
    } catch (const Error& e) {
      bad_request(std::string("The chat template failed: ") + e.what(), "messages");
    }
    // The template writes BOS itself, so no special tokens unless asked for.
    out.push_back(
        encode_prompt(*tokenizer, text, request.add_special_tokens.value_or(false), "messages"));
    truncate_prompt(out.back(), request.truncate_prompt_tokens);
    return out;
  }
  for (const PromptInput& p : request.prompts) {
    if (p.is_ids) {
      out.push_back(p.ids);
      truncate_prompt(out.back(), request.truncate_prompt_tokens);
      continue;
    }
    if (!tokenizer)
      bad_request(
          "This model folder has no tokenizer.json: give the prompt as token ids (a list of "
          "integers).",
          "prompt");
    out.push_back(
        encode_prompt(*tokenizer, p.text, request.add_special_tokens.value_or(true), "prompt"));
    if (out.back().empty()) bad_request("The prompt must not be empty.", "prompt");
    truncate_prompt(out.back(), request.truncate_prompt_tokens);
  }
  return out;
}

std::string echo_text(const ApiRequest& request, size_t prompt, const std::vector<int32_t>& ids,
                      const Tokenizer& tokenizer) {
  const PromptInput& p = request.prompts[prompt];
  if (!p.is_ids) {
    // Cut: it kept its last k tokens, and the whole prompt has more (checked only then).
    const int32_t keep = request.truncate_prompt_tokens;
    const bool cut =
        keep > 0 && ids.size() == static_cast<size_t>(keep) &&
        encode_prompt(tokenizer, p.text, request.add_special_tokens.value_or(true), "prompt")
                .size() > ids.size();
    if (!cut) return p.text;
  }
  return tokenizer.decode(ids, /*skip_special_tokens=*/false);
}

namespace {

void check_names(const json& body, std::initializer_list<const char*> names) {
  if (!body.is_object()) bad_request("The request body must be a JSON object.");
  for (const auto& [key, value] : body.items()) {
    bool known = false;
    for (const char* n : names) known = known || key == n;
    if (!known) bad_request("Unrecognized request argument supplied: " + key, key);
  }
}

void check_model_name(const json& body, const ServerLimits& limits) {
  ApiRequest unused;
  check_model(body, limits, unused);
}

[[noreturn]] void no_tokenizer(const char* param) {
  bad_request("This model folder has no tokenizer.json: the server cannot tokenize or detokenize.",
              param);
}

}  // namespace

json tokenize_response(const json& body, const ServerLimits& limits, const Tokenizer* tokenizer,
                       const ChatTemplate* chat_template) {
  try {
    const bool chat = body.is_object() && body.contains("messages");
    if (chat) {
      check_names(body, {"model", "messages", "add_generation_prompt", "continue_final_message",
                         "add_special_tokens", "return_token_strs", "chat_template_kwargs"});
    } else {
      check_names(body, {"model", "prompt", "add_special_tokens", "return_token_strs"});
    }
    check_model_name(body, limits);
    const bool token_strs = get_bool(body, "return_token_strs").value_or(false);
    const bool special = get_bool(body, "add_special_tokens").value_or(!chat);
    std::string text;
    if (chat) {
      const json* messages = field(body, "messages");
      if (!messages || !messages->is_array() || messages->empty())
        bad_request("'messages' must be a non-empty list of messages.", "messages");
      if (get_bool(body, "continue_final_message").value_or(false))
        bad_request("'continue_final_message' is not supported.", "continue_final_message");
      if (!tokenizer || !chat_template)
        bad_request("This model folder has no tokenizer.json (and chat template).", "messages");
      ChatRequest request;
      for (size_t i = 0; i < messages->size(); ++i)
        request.messages.push_back(parse_message((*messages)[i], i));
      request.add_generation_prompt = get_bool(body, "add_generation_prompt").value_or(true);
      const json kwargs = template_kwargs(body);
      for (const auto& [key, value] : kwargs.items()) request.extra[key] = value;
      try {
        text = chat_template->render(request);
      } catch (const Error& e) {
        bad_request(std::string("The chat template failed: ") + e.what(), "messages");
      }
    } else {
      const json* prompt = field(body, "prompt");
      if (!prompt) bad_request("'prompt' is required.", "prompt");
      if (!prompt->is_string()) wrong_type("prompt", "a string");
      if (!tokenizer) no_tokenizer("prompt");
      text = prompt->get<std::string>();
    }
    const std::vector<int32_t> ids =
        encode_prompt(*tokenizer, text, special, chat ? "messages" : "prompt");
    json strs = nullptr;
    if (token_strs) {
      strs = json::array();
      for (int32_t id : ids) strs.push_back(tokenizer->id_to_token(id));
    }
    return {{"count", ids.size()},
            {"max_model_len", limits.max_model_len},
            {"tokens", ids},
            {"token_strs", strs}};
  } catch (const json::exception& e) {
    bad_request(std::string("The request has a field of an unexpected type: ") + e.what());
  }
}

json detokenize_response(const json& body, const ServerLimits& limits, const Tokenizer* tokenizer) {
  try {
    check_names(body, {"model", "tokens"});
    check_model_name(body, limits);
    const json* tokens = field(body, "tokens");
    if (!tokens) bad_request("'tokens' is required.", "tokens");
    if (!tokens->is_array()) wrong_type("tokens", "a list of token ids");
    std::vector<int32_t> ids;
    for (const json& v : *tokens) {
      if (!v.is_number_integer()) wrong_type("tokens", "a list of token ids");
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id >= limits.vocab_size) {
        std::ostringstream m;
        m << "Token id " << id << " is out of vocabulary (size " << limits.vocab_size << ").";
        bad_request(m.str(), "tokens");
      }
      ids.push_back(static_cast<int32_t>(id));
    }
    if (!tokenizer) no_tokenizer("tokens");
    try {
      return {{"prompt", tokenizer->decode(ids, false)}};
    } catch (const Error& e) {  // an id of the model's vocabulary the tokenizer lacks
      bad_request(std::string("The tokens cannot be decoded: ") + e.what(), "tokens");
    }
  } catch (const json::exception& e) {
    bad_request(std::string("The request has a field of an unexpected type: ") + e.what());
  }
}

}  // namespace l2kv::server
