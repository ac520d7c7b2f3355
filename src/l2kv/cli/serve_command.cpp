#include "l2kv/cli/serve_command.h"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "l2kv/chat/chat_template.h"
#include "l2kv/cli/flags.h"
#include "l2kv/cli/model_loading.h"
#include "l2kv/core/error.h"
#include "l2kv/server/engine_loop.h"
#include "l2kv/server/http_server.h"
#include "l2kv/server/metrics.h"

namespace l2kv::cli {
namespace {

struct ServeOptions {
  ModelOptions model;
  EngineConfig engine;
  server::HttpServerOptions http;
  bool served_model_name_given = false;  // an empty name given is refused, not replaced
};

// The signal handler only writes a byte to this pipe; a watcher thread does the rest.
int g_signal_pipe[2] = {-1, -1};

extern "C" void on_stop_signal(int) {
  const char byte = 1;
  [[maybe_unused]] const ssize_t n = write(g_signal_pipe[1], &byte, 1);
}

int run_serve(ServeOptions o) {
  if (o.served_model_name_given && o.http.served_model_name.empty())
    throw Error("--served-model-name is empty: give the name clients send as \"model\"");
  if (o.http.served_model_name.empty()) o.http.served_model_name = o.model.model;
  o.http.model_path = o.model.model;

  // The model, tokenizer and engine are made on the engine thread (its CUDA context).
  std::optional<Tokenizer> tokenizer;
  std::string description;
  server::Metrics metrics(o.http.served_model_name);
  server::EngineLoop loop(
      [&]() {
        LoadedModel loaded = load_model(o.model);
        tokenizer = std::move(loaded.tokenizer);
        description = loaded.description;
        o.http.default_sampling = loaded.sampling_defaults;
        o.http.default_max_tokens = loaded.default_max_tokens;
        return std::make_unique<Engine>(std::move(loaded.runner), tokenizer ? &*tokenizer : nullptr,
                                        o.engine);
      },
      &metrics);

  server::ServingModel serving;
  std::unique_ptr<ChatTemplate> chat;
  if (tokenizer) {
    serving.tokenizer = &*tokenizer;
    try {
      chat = load_chat_template(*tokenizer);
      serving.chat_template = chat.get();
    } catch (const Error& e) {
      serving.chat_unavailable = std::string("the model's chat template: ") + e.what();
      std::fprintf(stderr, "l2kv: chat completions disabled: %s\n", e.what());
    }
  } else {
    serving.chat_unavailable =
        "the model folder has no tokenizer.json (only token-id prompts on /v1/completions)";
    std::fprintf(stderr, "l2kv: no tokenizer.json: /v1/completions takes token ids only\n");
  }

  server::HttpServer http(loop, metrics, serving, o.http);
  const int port = http.bind();
  const EngineStats stats = loop.snapshot().engine;
  std::fprintf(stderr,
               "l2kv: serving %s as \"%s\" (%s); KV cache of %d blocks of %d tokens; "
               "max_model_len %d\n",
               o.model.model.c_str(), o.http.served_model_name.c_str(), description.c_str(),
               stats.kv_blocks_total, loop.config().block_size, loop.config().max_model_len);
  std::fprintf(stderr, "l2kv: listening on http://%s:%d (OpenAI API under /v1)\n",
               o.http.host.c_str(), port);

  if (pipe(g_signal_pipe) != 0) throw Error("cannot create the signal pipe");
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a vanished client must not kill the server

  std::thread watcher([&] {
    char byte = 0;
    while (read(g_signal_pipe[0], &byte, 1) < 0 && errno == EINTR) {
    }
    if (byte == 0) return;  // the pipe closed: normal exit
    std::fprintf(stderr, "l2kv: shutting down: aborting requests in flight\n");
    loop.shutdown();  // in-flight requests end with finish_reason "abort"
    http.stop();
  });
  http.listen();  // returns after stop(), once every connection has ended
  close(g_signal_pipe[1]);
  watcher.join();
  close(g_signal_pipe[0]);
  loop.shutdown();
  std::fprintf(stderr, "l2kv: stopped\n");
  return 0;
}

}  // namespace

std::function<int()> add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "Serve the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models) with /health, "
      "/version and /metrics (Prometheus)");
  add_model_options(*cmd, o->model);
  add_engine_options(*cmd, o->engine);
  server::HttpServerOptions& h = o->http;
  cmd->add_option("--host", h.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", h.port, "Port to listen on (0: any free port)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--served-model-name", h.served_model_name,
                  "The model name clients give in \"model\" (default: the --model argument)");
  cmd->add_option("--api-key", h.api_key,
                  "Require \"Authorization: Bearer KEY\" on /v1 routes (401 otherwise); "
                  "/health and /metrics stay open");
  cmd->add_option("--max-body-bytes", h.max_body_bytes,
                  "Largest request body accepted; larger ones are answered 413")
      ->check(unsigned_number())
      ->capture_default_str();
  cmd->add_option("--max-connections", h.threads,
                  "Generations served at once, each on its own HTTP worker (one more is answered "
                  "503); 4 more workers answer /health, /metrics and the rest")
      ->check(CLI::Range(1, 65536))
      ->capture_default_str();
  cmd->add_option("--tool-call-parser", h.tool_call_parser,
                  "How tool calls are read from a chat's output with tool_choice \"auto\": "
                  "hermes (Qwen2.5/Qwen3 <tool_call>), llama3_json (Llama 3.1/3.2) or mistral "
                  "([TOOL_CALLS]); without it \"auto\" is refused, while \"required\" and a "
                  "named function (forced by the grammar) always work")
      ->check(CLI::IsMember({"hermes", "llama3_json", "mistral"}));
  return [o, cmd] {
    o->served_model_name_given = cmd->count("--served-model-name") > 0;
    return run_serve(*o);
  };
}

}  // namespace l2kv::cli
