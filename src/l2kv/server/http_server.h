// The HTTP front of `l2kv serve`: cpp-httplib routes for the OpenAI API (/v1/completions,
// /v1/chat/completions, /v1/models), /health, /version and /metrics, over the EngineLoop.
// Streams as server-sent events; a client that goes away has its requests aborted at once (one
// that only shut down its sending side keeps its answer). /health answers 503 with the reason
// once the engine cannot serve, and is answered even while every generation slot streams.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "l2kv/sampling/sampling_params.h"

namespace l2kv {
class Tokenizer;
class ChatTemplate;
}  // namespace l2kv

namespace l2kv::server {

class EngineLoop;
class Metrics;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;
  std::string served_model_name;
  std::string model_path;             // for /v1/models' "root"
  std::string api_key;                // empty: no check
  size_t max_body_bytes = 16u << 20;  // larger bodies are answered 413
  int threads = 512;                  // generations at once (more: 503); +4 workers for the rest
  std::string tool_call_parser;       // --tool-call-parser: "", hermes, llama3_json, mistral
  // What a request's sampling settings start from (the model's generation_config.json
  // defaults, LoadedModel::sampling_defaults); the request's own fields replace them.
  SamplingParams default_sampling{};
  // The most tokens a request without max_tokens gets (generation_config.json's
  // max_new_tokens); unset: what the context leaves (chat) or 16 (completions).
  std::optional<int32_t> default_max_tokens{};
};

// What the HTTP side needs besides the loop. `chat_template` null: chat answers 400 with
// `chat_unavailable` as the reason.
struct ServingModel {
  const Tokenizer* tokenizer = nullptr;
  const ChatTemplate* chat_template = nullptr;
  std::string chat_unavailable;
};

class HttpServer {
 public:
  HttpServer(EngineLoop& loop, Metrics& metrics, ServingModel model, HttpServerOptions options);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds host:port; throws l2kv::Error when it cannot (port taken, bad host). Returns the
  // port (the chosen one for port 0).
  int bind();
  // Serves until stop(); returns when the listener has closed and every connection ended.
  void listen();
  // Closes the listener; safe from any thread (not from a signal handler).
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace l2kv::server
