#include "l2kv/cli/generate_command.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "l2kv/chat/chat_template.h"
#include "l2kv/cli/flags.h"
#include "l2kv/cli/model_loading.h"
#include "l2kv/core/error.h"
#include "l2kv/engine/output_processor.h"

namespace l2kv::cli {
namespace {

struct GenerateOptions {
  ModelOptions model;
  EngineConfig engine;
  SamplingParams sampling;
  std::vector<std::string> prompts;
  std::vector<std::string> prompt_ids;
  std::string prompt_file;
  std::string prompt_format = "auto";  // of --prompt-file: auto (by its suffix), text or jsonl
  bool chat = false;
  std::string system;
  std::string output_format = "text";
  int64_t seed = -1;
  // The sampling flags given on the command line (--temperature ...): the others take the
  // model's generation_config.json defaults.
  std::vector<std::string> sampling_flags_given;
};

// One prompt as given: text, token ids, or chat messages.
struct PromptInput {
  std::string text;
  std::vector<int32_t> ids;
  nlohmann::ordered_json messages;
  bool has_ids = false;
  std::string where;  // "file:line: " for a prompt read from a file, for its errors
};

std::vector<int32_t> parse_ids(const std::string& list) {
  std::vector<int32_t> ids;
  std::stringstream s(list);
  std::string item;
  while (std::getline(s, item, ',')) {
    try {
      size_t used = 0;
      const long v = std::stol(item, &used);
      if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(item);
      ids.push_back(static_cast<int32_t>(v));
    } catch (const std::exception&) {
      throw Error("--prompt-ids: '" + item + "' is not a token id");
    }
  }
  if (ids.empty()) throw Error("--prompt-ids: empty list");
  return ids;
}

bool ends_with_jsonl(const std::string& name) {
  if (name.size() < 6) return false;
  std::string suffix = name.substr(name.size() - 6);
  for (char& c : suffix) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return suffix == ".jsonl";
}

// Reads prompts: JSONL (one of {"prompt": text} | {"prompt_ids": [...]} | {"messages": [...]} a
// line) when `format` is jsonl (auto: the name ends in .jsonl), else one prompt a line. "-" is
// stdin. A UTF-8 BOM and CRLF line ends are taken off; blank lines are skipped.
std::vector<PromptInput> read_prompt_file(const std::string& name, const std::string& format) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (name != "-") {
    file.open(name);
    if (!file) throw Error("--prompt-file " + name + ": cannot open");
    in = &file;
  }
  const bool jsonl = format == "jsonl" || (format == "auto" && ends_with_jsonl(name));
  std::vector<PromptInput> prompts;
  std::string line;
  int64_t number = 0;
  while (std::getline(*in, line)) {
    ++number;
    const std::string where = name + ":" + std::to_string(number) + ": ";
    if (number == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    PromptInput p;
    if (!jsonl) {
      p.text = line;
    } else {
      nlohmann::ordered_json j;
      try {
        j = nlohmann::ordered_json::parse(line);
      } catch (const std::exception& e) {
        throw Error(where + "not JSON (" + e.what() + ")");
      }
      if (!j.is_object()) throw Error(where + "expected an object");
      // One prompt field a line, and nothing else: a field l2kv would not use is refused.
      for (const auto& [key, value] : j.items())
        if (key != "prompt" && key != "prompt_ids" && key != "messages")
          throw Error(where + "unknown field \"" + key +
                      "\" (a line holds one of \"prompt\", \"prompt_ids\" or \"messages\"; "
                      "sampling is set by the flags)");
      if (j.size() != 1)
        throw Error(where + "give one of \"prompt\", \"prompt_ids\" or \"messages\"");
      if (j.contains("prompt") && j["prompt"].is_string()) {
        p.text = j["prompt"].get<std::string>();
      } else if (j.contains("prompt_ids") && j["prompt_ids"].is_array()) {
        for (const auto& v : j["prompt_ids"]) {
          if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX ||
              (v.is_number_unsigned() && v.get<uint64_t>() > INT32_MAX))
            throw Error(where + "prompt_ids holds " + v.dump() + ", not a token id");
          p.ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
        }
        if (p.ids.empty()) throw Error(where + "prompt_ids is empty");
        p.has_ids = true;
      } else if (j.contains("messages") && j["messages"].is_array() && !j["messages"].empty()) {
        p.messages = j["messages"];
      } else {
        throw Error(where +
                    "expected a \"prompt\" string, a \"prompt_ids\" list or a non-empty "
                    "\"messages\" list");
      }
    }
    p.where = where;
    prompts.push_back(std::move(p));
  }
  return prompts;
}

struct Result {
  std::string prompt_text;
  std::vector<int32_t> prompt_ids;  // when the prompt was given as ids
  std::vector<int32_t> output_ids;
  std::string output;
  int32_t prompt_tokens = 0;
  int32_t completion_tokens = 0;
  std::string finish_reason, stop_reason, error;
  int32_t stop_token_id = -1;  // stop_reason as the token id it is (written as a number)
  bool done = false;
};

int run_generate(const GenerateOptions& given) {
  LoadedModel loaded = load_model(given.model);
  GenerateOptions o = given;
  const auto flag_given = [&](const char* flag) {
    return std::find(o.sampling_flags_given.begin(), o.sampling_flags_given.end(), flag) !=
           o.sampling_flags_given.end();
  };
  const SamplingParams& defaults = loaded.sampling_defaults;
  if (!flag_given("--temperature")) o.sampling.temperature = defaults.temperature;
  if (!flag_given("--top-p")) o.sampling.top_p = defaults.top_p;
  if (!flag_given("--top-k")) o.sampling.top_k = defaults.top_k;
  if (!flag_given("--min-p")) o.sampling.min_p = defaults.min_p;
  if (!flag_given("--repetition-penalty"))
    o.sampling.repetition_penalty = defaults.repetition_penalty;
  if (!flag_given("--max-tokens") && loaded.default_max_tokens)  // at most, as serve takes it
    o.sampling.max_tokens = std::min(o.sampling.max_tokens, *loaded.default_max_tokens);
  std::vector<PromptInput> inputs;
  for (const auto& t : o.prompts) inputs.push_back({t, {}, {}, false, {}});
  for (const auto& list : o.prompt_ids) inputs.push_back({"", parse_ids(list), {}, true, {}});
  if (!o.prompt_file.empty()) {
    auto more = read_prompt_file(o.prompt_file, o.prompt_format);
    inputs.insert(inputs.end(), more.begin(), more.end());
  }
  // stdin only when no prompt source was given at all (an empty --prompt-file is no prompts).
  if (inputs.empty() && o.prompt_file.empty() && !isatty(STDIN_FILENO))
    inputs = read_prompt_file("-", o.prompt_format);
  if (inputs.empty())
    throw Error(
        "no prompts: give them as arguments, with --prompt-ids, --prompt-file, or on stdin");

  const Tokenizer* tokenizer = loaded.tokenizer ? &*loaded.tokenizer : nullptr;
  std::unique_ptr<ChatTemplate> chat;
  const bool any_messages = std::any_of(
      inputs.begin(), inputs.end(), [](const PromptInput& in) { return !in.messages.is_null(); });
  if (!o.system.empty() && any_messages)
    throw Error(
        "--system applies to text prompts with --chat; a \"messages\" line carries its own "
        "system message");
  if (o.chat || any_messages) {
    if (!tokenizer) throw Error("--chat needs the model folder's tokenizer.json");
    chat = load_chat_template(*tokenizer);
  }
  Engine engine(std::move(loaded.runner), tokenizer, o.engine);
  OutputProcessor texts(tokenizer);  // the requests' text and stop strings, keyed by prompt index
  const EngineStats initial = engine.stats();
  std::fprintf(stderr, "l2kv: KV cache of %d blocks of %d tokens; max_model_len %d\n",
               initial.kv_blocks_total, engine.config().block_size, engine.config().max_model_len);

  std::vector<Result> results(inputs.size());
  // One prompt's text streams as it comes; without a tokenizer there is no text: its ids are
  // printed at the end instead.
  const bool stream_text = o.output_format == "text" && inputs.size() == 1 && tokenizer;
  for (size_t i = 0; i < inputs.size(); ++i) {
    PromptInput& in = inputs[i];
    try {  // a prompt read from a file names its line in any error
      GenerationRequest request;
      request.params = o.sampling;
      if (o.seed >= 0) request.params.seed = static_cast<uint64_t>(o.seed) + i;
      if (in.has_ids) {
        request.prompt = in.ids;
      } else {
        if (!tokenizer)
          throw Error("the model folder has no tokenizer.json: give prompts as token ids " +
                      std::string("(--prompt-ids or \"prompt_ids\" in a JSONL file)"));
        std::string text = in.text;
        bool add_special = true;
        if (o.chat || !in.messages.is_null()) {  // a template only where asked for
          ChatRequest c;
          if (!in.messages.is_null()) {
            c.messages = in.messages;
          } else {
            if (!o.system.empty())
              c.messages.push_back({{"role", "system"}, {"content", o.system}});
            c.messages.push_back({{"role", "user"}, {"content", in.text}});
          }
          text = chat->render(c);
          add_special = false;  // the template writes BOS itself
        }
        in.text = text;
        request.prompt = tokenizer->encode(text, add_special);
      }
      results[i].prompt_text = in.text;
      if (in.has_ids) results[i].prompt_ids = in.ids;
      results[i].prompt_tokens = static_cast<int32_t>(request.prompt.size());
      Result* r = &results[i];
      const auto key = static_cast<int64_t>(i);
      texts.add(key, request.params);  // bad stop strings throw before anything runs
      request.params.stop.clear();     // the output side's, not the engine's
      request.on_output = [r, stream_text, key, &texts, &engine](const RequestOutput& engine_out) {
        RequestOutput out = engine_out;
        const OutputProcessor::Verdict verdict = texts.process(key, out);
        if (verdict == OutputProcessor::Verdict::kDrop) return;
        // A stop string: the request ends before its next step.
        if (verdict == OutputProcessor::Verdict::kEnded) engine.abort(out.request_id);
        r->output_ids.insert(r->output_ids.end(), out.new_tokens.begin(), out.new_tokens.end());
        r->output += out.new_text;
        r->completion_tokens = out.completion_tokens;
        if (stream_text && !out.new_text.empty()) {
          std::fwrite(out.new_text.data(), 1, out.new_text.size(), stdout);
          std::fflush(stdout);
        }
        if (out.finished) {
          r->done = true;
          r->finish_reason = finish_reason_name(out.finish_reason);
          r->stop_reason = out.stop_reason;
          r->stop_token_id = out.stop_token_id;
          r->error = out.error;
        }
      };
      engine.add_request(std::move(request));  // invalid requests throw before anything runs
    } catch (const Error& e) {
      if (in.where.empty()) throw;
      throw Error(in.where + e.what());
    }
  }

  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  auto seconds_since = [](auto t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  while (engine.step()) {
    if (seconds_since(last_report) >= 1.0) {
      last_report = std::chrono::steady_clock::now();
      const EngineStats s = engine.stats();
      size_t done = 0;
      for (const auto& r : results) done += r.done;
      std::fprintf(stderr, "l2kv: %zu/%zu done, %d running, %d waiting, %.1f output tokens/s\n",
                   done, results.size(), s.running, s.waiting,
                   static_cast<double>(s.generation_tokens) / seconds_since(start));
    }
  }
  const double elapsed = seconds_since(start);
  const EngineStats s = engine.stats();

  int status = 0;
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    if (r.finish_reason == "error") status = 1;
    if (o.output_format == "jsonl") {
      nlohmann::ordered_json j = {{"index", i},
                                  {"prompt", r.prompt_text},
                                  {"output", r.output},
                                  {"output_ids", r.output_ids},
                                  {"prompt_tokens", r.prompt_tokens},
                                  {"completion_tokens", r.completion_tokens},
                                  {"finish_reason", r.finish_reason}};
      if (!r.prompt_ids.empty()) j["prompt_ids"] = r.prompt_ids;
      if (r.stop_token_id >= 0)
        j["stop_reason"] = r.stop_token_id;  // vLLM's: a stop token id is a number
      else if (!r.stop_reason.empty())
        j["stop_reason"] = r.stop_reason;
      if (!r.error.empty()) j["error"] = r.error;
      std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    } else if (stream_text) {
      std::printf("\n");
    } else {
      std::printf("=== %zu: %s\n", i, r.prompt_text.c_str());
      if (tokenizer) {
        std::printf("%s\n", r.output.c_str());
      } else {
        for (size_t t = 0; t < r.output_ids.size(); ++t)
          std::printf("%s%d", t ? " " : "", r.output_ids[t]);
        std::printf("\n");
      }
    }
    if (!r.error.empty())
      std::fprintf(stderr, "l2kv: request %zu failed: %s\n", i, r.error.c_str());
  }
  std::fprintf(stderr,
               "l2kv: %zu requests, %lld prompt + %lld output tokens in %.2f s: %.1f output "
               "tokens/s (%lld preemptions)\n",
               results.size(), static_cast<long long>(s.prompt_tokens),
               static_cast<long long>(s.generation_tokens), elapsed,
               static_cast<double>(s.generation_tokens) / elapsed,
               static_cast<long long>(s.preemptions));
  return status;
}

}  // namespace

std::function<int()> add_generate_command(CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  o->sampling.max_tokens = 128;
  CLI::App* cmd = app.add_subcommand(
      "generate",
      "Generate text for prompts given as arguments, with --prompt-ids, in a file, or on stdin");
  add_model_options(*cmd, o->model);
  add_engine_options(*cmd, o->engine);
  cmd->add_option("prompts", o->prompts, "Prompts (text; needs the model's tokenizer.json)");
  // One value a flag (repeat the flag for more), so the prompts after it stay prompts.
  cmd->add_option("--prompt-ids", o->prompt_ids,
                  "A prompt as comma-separated token ids (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--prompt-file", o->prompt_file,
                  "Prompts from a file, one per line, or JSONL with one of \"prompt\", "
                  "\"prompt_ids\" or \"messages\" per line (see --prompt-format); - reads stdin "
                  "(as does no prompt at all with stdin not a terminal)");
  cmd->add_option("--prompt-format", o->prompt_format,
                  "How --prompt-file is read: auto (JSONL when its name ends in .jsonl, else "
                  "text), text or jsonl")
      ->check(CLI::IsMember({"auto", "text", "jsonl"}))
      ->capture_default_str();
  cmd->add_flag("--chat", o->chat,
                "Apply the model's chat template to each text prompt (prompt_ids are used as "
                "given; \"messages\" lines always go through it)");
  cmd->add_option("--system", o->system, "System message for --chat");
  cmd->add_option("--output-format", o->output_format,
                  "text (a single prompt streams as it is generated) or jsonl (prompt, output, "
                  "token counts and finish reason per prompt)")
      ->check(CLI::IsMember({"text", "jsonl"}))
      ->capture_default_str();
  SamplingParams& p = o->sampling;
  cmd->add_option("--temperature", p.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str();
  cmd->add_option("--top-k", p.top_k, "Keep the k most likely tokens; -1 = all")
      ->capture_default_str();
  cmd->add_option("--top-p", p.top_p, "Keep the most likely tokens holding this probability")
      ->capture_default_str();
  cmd->add_option("--min-p", p.min_p, "Drop tokens below min_p times the most likely one's")
      ->capture_default_str();
  cmd->add_option("--repetition-penalty", p.repetition_penalty,
                  "Penalty for tokens already in the prompt or output; 1 = off")
      ->capture_default_str();
  cmd->add_option("--presence-penalty", p.presence_penalty,
                  "Subtracted from the logit of every token already generated")
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", p.frequency_penalty,
                  "Subtracted once per earlier occurrence in the output")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed,
                  "Sampling seed (prompt i uses seed + i); same seed, same tokens; -1: each "
                  "prompt's seed is drawn from --engine-seed (0 unless given, so a run repeats "
                  "as vLLM's default seed does; another --engine-seed draws other seeds)")
      ->check(whole_number(-1, std::numeric_limits<int64_t>::max()))
      ->capture_default_str();
  cmd->add_option("--max-tokens", p.max_tokens, "Most tokens to generate per prompt")
      ->capture_default_str();
  cmd->add_option("--min-tokens", p.min_tokens, "Tokens generated before EOS or a stop may end it")
      ->capture_default_str();
  cmd->add_option("--stop", p.stop, "Stop string (repeatable); not part of the output")
      ->allow_extra_args(false);
  cmd->add_option("--stop-token-ids", p.stop_token_ids,
                  "Token ids that end generation (comma-separated, or the flag repeated)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_flag("--ignore-eos", p.ignore_eos, "Keep generating after the model's EOS token");
  return [o, cmd] {
    if (!o->system.empty() && !o->chat)
      throw Error("--system needs --chat (the system message goes through the chat template)");
    for (const char* flag :
         {"--temperature", "--top-p", "--top-k", "--min-p", "--repetition-penalty", "--max-tokens"})
      if (cmd->count(flag) > 0) o->sampling_flags_given.push_back(flag);
    return run_generate(*o);
  };
}

}  // namespace l2kv::cli
