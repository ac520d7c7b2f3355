#include "l2kv/server/http_server.h"

#include <dirent.h>
#include <httplib.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "l2kv/core/error.h"
#include "l2kv/server/engine_loop.h"
#include "l2kv/server/metrics.h"
#include "l2kv/server/openai_protocol.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv::server {
namespace {

constexpr const char* kVersion = "0.1.0";
constexpr auto kPollInterval = std::chrono::milliseconds(50);

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump_json(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status, e.to_json());
}

std::string numeric_host(const sockaddr_storage& addr, socklen_t len, int& port) {
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof host, serv,
                  sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "";
  port = std::atoi(serv);
  return host;
}

// The socket of the connection that carries `req`. httplib 0.11 does not hand it to handlers,
// so find it among our descriptors by its two ends; -1 when not found. The descriptor stays
// ours while the handler (and its content provider) runs.
int connection_socket(const httplib::Request& req) {
  DIR* dir = opendir("/proc/self/fd");
  if (!dir) return -1;
  int found = -1;
  while (const dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || fd < 0) continue;
    struct stat st {};
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{}, local{};
    socklen_t peer_len = sizeof peer, local_len = sizeof local;
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&local), &local_len) != 0)
      continue;
    int peer_port = -1, local_port = -1;
    if (numeric_host(peer, peer_len, peer_port) != req.remote_addr || peer_port != req.remote_port)
      continue;
    numeric_host(local, local_len, local_port);
    if (local_port != req.local_port) continue;
    found = static_cast<int>(fd);
    break;
  }
  closedir(dir);
  return found;
}

// True once the client has closed or reset the connection (read side hung up).
bool peer_gone(int fd) {
  if (fd < 0) return false;
  pollfd p{fd, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

std::string random_id(const char* prefix) {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%s-%016llx%04llx", prefix,
                static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(counter.fetch_add(1) & 0xffff));
  return buffer;
}

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Everything one API request needs after its engine requests were accepted; shared by the
// handler and its streaming content provider.
struct Generation {
  EngineLoop* loop = nullptr;
  ApiRequest request;
  ResponseHeader header;
  TokenText token_text;
  std::vector<std::string> prompt_texts;
  std::vector<int32_t> prompt_tokens;
  EngineLoop::Submission submission;
  std::vector<ChoiceOutput> choices;
  std::vector<int64_t> text_offsets;  // completions logprobs: characters written so far
  int socket = -1;
  bool finished = false;

  ~Generation() {
    // Whatever ended the response (done, disconnect, exception), nothing is left running.
    if (!finished && loop) loop->abort(submission.request_ids);
  }
  int64_t prompt_total() const {
    int64_t n = 0;
    for (int32_t p : prompt_tokens) n += p;
    return n;
  }
  int64_t completion_total() const {
    int64_t n = 0;
    for (const ChoiceOutput& c : choices) n += c.completion_tokens;
    return n;
  }
};

}  // namespace

struct HttpServer::Impl {
  EngineLoop& loop;
  Metrics& metrics;
  ServingModel model;
  HttpServerOptions options;
  ServerLimits limits;
  httplib::Server server;

  Impl(EngineLoop& l, Metrics& m, ServingModel sm, HttpServerOptions o)
      : loop(l), metrics(m), model(std::move(sm)), options(std::move(o)) {
    limits.served_model_name = options.served_model_name;
    limits.max_model_len = loop.config().max_model_len;
    limits.vocab_size = loop.vocab_size();
    routes();
  }

  // Runs a handler; ApiError becomes its JSON answer, anything else a 500.
  template <typename F>
  httplib::Server::Handler guarded(F handler) {
    return [handler](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const std::exception& e) {
        send_error(res, ApiError(500, std::string("Internal error: ") + e.what()));
      }
    };
  }

  void routes() {
    const int threads = options.threads;
    server.new_task_queue = [threads] {
      return new httplib::ThreadPool(static_cast<size_t>(threads));
    };
    server.set_payload_max_length(options.max_body_bytes);
    server.set_keep_alive_timeout(2);  // shutdown waits this long for idle keep-alive reads
    server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (options.api_key.empty() || req.path.rfind("/v1", 0) != 0)
        return httplib::Server::HandlerResponse::Unhandled;  // /health, /metrics stay open
      if (req.get_header_value("Authorization") == "Bearer " + options.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      send_error(res, ApiError(401, "Incorrect or missing API key.", "", "invalid_request_error",
                               "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    });
    server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty() || res.is_chunked_content_provider_) return;
      if (res.status == 404)
        send_error(
            res, ApiError(404, "Not found: " + req.method + " " + req.path, "", "not_found_error"));
      else if (res.status == 413)
        send_error(res, ApiError(413, "The request body is larger than the server's limit.", "",
                                 "invalid_request_error", "request_too_large"));
      else
        send_error(res, ApiError(res.status, "HTTP error " + std::to_string(res.status)));
    });
    server.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "unknown exception";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          send_error(res, ApiError(500, "Internal error: " + what));
        });

    server.Post("/v1/completions",
                guarded([this](const httplib::Request& req, httplib::Response& res) {
                  generate(req, res, Endpoint::kCompletions);
                }));
    server.Post("/v1/chat/completions",
                guarded([this](const httplib::Request& req, httplib::Response& res) {
                  generate(req, res, Endpoint::kChatCompletions);
                }));
    server.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
                 json model_card = {{"id", options.served_model_name},
                                    {"object", "model"},
                                    {"created", unix_seconds()},
                                    {"owned_by", "l2kv"},
                                    {"root", options.model_path},
                                    {"parent", nullptr},
                                    {"max_model_len", limits.max_model_len}};
                 send_json(res, 200, {{"object", "list"}, {"data", json::array({model_card})}});
               }));
    server.Get("/health", [](const httplib::Request&, httplib::Response& res) {
      res.status = 200;
      res.set_content("", "text/plain");
    });
    server.Get("/version", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"version", kVersion}});
    });
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      const LoopSnapshot s = loop.snapshot();
      const LoadGauges load{s.engine.running, s.engine.waiting, s.engine.kv_blocks_total,
                            s.engine.kv_blocks_free};
      res.status = 200;
      res.set_content(metrics.render(load), "text/plain; version=0.0.4");
    });
    // The right path with the wrong method: 405.
    const auto not_allowed = [](const httplib::Request& req, httplib::Response& res) {
      send_error(res, ApiError(405, "Method " + req.method + " not allowed on " + req.path, "",
                               "invalid_request_error", "method_not_allowed"));
    };
    for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
      server.Get(path, not_allowed);
      server.Put(path, not_allowed);
      server.Delete(path, not_allowed);
    }
    for (const char* path : {"/v1/models", "/health", "/version", "/metrics"}) {
      server.Post(path, not_allowed);
      server.Put(path, not_allowed);
      server.Delete(path, not_allowed);
    }
  }

  void generate(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    json body;
    try {
      body = json::parse(req.body);
    } catch (const json::parse_error& e) {
      bad_request(std::string("The request body is not valid JSON: ") + e.what());
    }
    auto g = std::make_shared<Generation>();
    g->request = endpoint == Endpoint::kCompletions ? parse_completion_request(body, limits)
                                                    : parse_chat_request(body, limits);
    const ApiRequest& r = g->request;
    if (endpoint == Endpoint::kChatCompletions && !model.chat_template)
      bad_request("Chat completions are not available: " + model.chat_unavailable, "messages");
    const std::vector<std::vector<int32_t>> prompts =
        tokenize_prompts(r, model.tokenizer, model.chat_template);

    std::vector<GenerationRequest> requests;
    for (size_t p = 0; p < prompts.size(); ++p) {
      const int32_t max_tokens =
          resolve_max_tokens(r, static_cast<int32_t>(prompts[p].size()), limits.max_model_len);
      g->prompt_tokens.push_back(static_cast<int32_t>(prompts[p].size()));
      std::string text;
      if (r.echo) {
        if (!r.prompts[p].is_ids)
          text = r.prompts[p].text;
        else if (model.tokenizer)
          text = model.tokenizer->decode(prompts[p], r.params.skip_special_tokens);
      }
      g->prompt_texts.push_back(std::move(text));
      for (int32_t j = 0; j < r.n; ++j) {
        GenerationRequest e;
        e.prompt = prompts[p];
        e.params = r.params;
        e.params.max_tokens = max_tokens;
        if (r.params.seed) e.params.seed = *r.params.seed + static_cast<uint64_t>(j);
        requests.push_back(std::move(e));
      }
    }
    g->header = {random_id(endpoint == Endpoint::kCompletions ? "cmpl" : "chatcmpl"),
                 unix_seconds(), r.model};
    g->token_text = token_text_for(model.tokenizer);
    g->choices.resize(requests.size());
    g->text_offsets.assign(requests.size(), 0);
    g->socket = connection_socket(req);
    g->submission = loop.submit(std::move(requests));  // a refused request throws a 400 here
    g->loop = &loop;

    if (r.stream) {
      res.status = 200;
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream", [g](size_t, httplib::DataSink& sink) { return stream(*g, sink); },
          [g](bool) {
            if (!g->finished) g->loop->abort(g->submission.request_ids);
          });
      return;
    }
    std::vector<OutputChannel::Item> items;
    for (bool done = false; !done;) {
      items.clear();
      done = g->submission.channel->pop(items, kPollInterval);
      for (const auto& item : items)
        g->choices[static_cast<size_t>(item.choice)].append(item.output);
      if (!done && peer_gone(g->socket)) return;  // ~Generation aborts; nobody reads an answer
    }
    g->finished = true;
    for (const ChoiceOutput& c : g->choices)
      if (c.finish_reason == FinishReason::kError)
        throw ApiError(500, "Generation failed: " + c.error);
    send_json(res, 200,
              endpoint == Endpoint::kCompletions
                  ? completion_response(g->header, r, g->choices, g->prompt_texts, g->prompt_tokens,
                                        g->token_text)
                  : chat_response(g->header, r, g->choices, g->prompt_tokens, g->token_text));
  }

  // Writes the whole event stream; returns false (after aborting) when the client is gone.
  static bool stream(Generation& g, httplib::DataSink& sink) {
    const ApiRequest& r = g.request;
    const bool chat = r.endpoint == Endpoint::kChatCompletions;
    const auto write = [&](const std::string& event) {
      return sink.write(event.data(), event.size());
    };
    const auto gone = [&] {
      g.loop->abort(g.submission.request_ids);
      return false;
    };
    for (size_t i = 0; i < g.choices.size(); ++i) {
      const auto index = static_cast<int32_t>(i);
      if (chat && !write(sse_event(chat_role_chunk(g.header, index)))) return gone();
      if (!chat && r.echo) {
        const std::string& prompt = g.prompt_texts[i / static_cast<size_t>(r.n)];
        g.text_offsets[i] = static_cast<int64_t>(prompt.size());
        json logprobs = nullptr;
        if (r.params.logprobs >= 0) logprobs = completion_logprobs_json({}, g.token_text, 0);
        if (!write(sse_event(
                completion_chunk(g.header, index, prompt, FinishReason::kNone, logprobs))))
          return gone();
      }
    }
    std::vector<OutputChannel::Item> items;
    for (bool done = false; !done;) {
      items.clear();
      done = g.submission.channel->pop(items, kPollInterval);
      if (!done && peer_gone(g.socket)) return gone();
      for (const OutputChannel::Item& item : items) {
        const RequestOutput& out = item.output;
        const auto i = static_cast<size_t>(item.choice);
        g.choices[i].append(out);
        const bool has_piece = !out.new_text.empty() || !out.new_tokens.empty();
        if (out.finished && out.finish_reason == FinishReason::kError) {
          if (!write(sse_event(ApiError(500, "Generation failed: " + out.error).to_json())))
            return gone();
          continue;
        }
        if (chat) {
          if (has_piece) {
            json logprobs = nullptr;
            if (r.params.logprobs >= 0)
              logprobs = chat_logprobs_json(out.new_logprobs, g.token_text);
            if (!write(
                    sse_event(chat_content_chunk(g.header, item.choice, out.new_text, logprobs))))
              return gone();
          }
          if (out.finished &&
              !write(sse_event(chat_finish_chunk(g.header, item.choice, out.finish_reason))))
            return gone();
        } else if (has_piece || out.finished) {
          json logprobs = nullptr;
          if (r.params.logprobs >= 0) {
            logprobs = completion_logprobs_json(out.new_logprobs, g.token_text, g.text_offsets[i]);
            for (const SampledToken& t : out.new_logprobs)
              g.text_offsets[i] += static_cast<int64_t>(g.token_text(t.token).size());
          }
          if (!write(sse_event(completion_chunk(
                  g.header, item.choice, out.new_text,
                  out.finished ? out.finish_reason : FinishReason::kNone, logprobs))))
            return gone();
        }
      }
    }
    g.finished = true;
    if (r.include_usage && !write(sse_event(usage_chunk(g.header, r.endpoint, g.prompt_total(),
                                                        g.completion_total()))))
      return false;
    if (!write(kSseDone)) return false;
    sink.done();
    return true;
  }
};

HttpServer::HttpServer(EngineLoop& loop, Metrics& metrics, ServingModel model,
                       HttpServerOptions options)
    : impl_(std::make_unique<Impl>(loop, metrics, std::move(model), std::move(options))) {}

HttpServer::~HttpServer() = default;

int HttpServer::bind() {
  const HttpServerOptions& o = impl_->options;
  if (o.port == 0) {
    const int port = impl_->server.bind_to_any_port(o.host);
    if (port <= 0) throw Error("cannot bind " + o.host + " to a port");
    return port;
  }
  if (!impl_->server.bind_to_port(o.host, o.port))
    throw Error("cannot bind " + o.host + ":" + std::to_string(o.port) +
                " (in use, or not an address of this machine)");
  return o.port;
}

void HttpServer::listen() {
  impl_->server.listen_after_bind();
}

void HttpServer::stop() {
  impl_->server.stop();
}

}  // namespace l2kv::server
