#include "l2kv/server/http_server.h"

#include <httplib.h>
#include <malloc.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <utility>

#include "l2kv/core/error.h"
#include "l2kv/server/engine_loop.h"
#include "l2kv/server/metrics.h"
#include "l2kv/server/openai_protocol.h"
#include "l2kv/structured/grammar_cache.h"
#include "l2kv/structured/tokenizer_vocabulary.h"
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

// The socket of the connection this worker thread serves, set by ConnectionServer for the
// whole connection: httplib runs a connection's handlers and content providers on the thread
// that reads it, and 0.11 does not hand the socket to them.
thread_local int t_connection_socket = -1;
// Set by the request's own checks (its framing, a refusal before its body was read): the
// connection closes after the answer, so no byte left of that request is read as a next one.
thread_local bool t_close_connection = false;
// httplib 0.11 applies its payload limit to Content-Length bodies only: a chunked request may
// read this many bytes (from its request line on; set once its headers are read), and one
// more fails its read and sets t_request_too_large. Twice the body limit, for the chunks'
// framing; the handlers hold the body itself to the limit.
thread_local size_t t_chunked_request_limit = SIZE_MAX;
thread_local bool t_request_too_large = false;
// What a chunked request may take beyond twice its body limit: request line and headers.
constexpr size_t kHeaderBytes = size_t{1} << 20;
// After a request of this many bytes is answered and freed, the allocator hands its pages back
// (glibc keeps a worker thread's freed arena otherwise: 0.8 GB held after some 10 MB prompts).
constexpr size_t kLargeRequestBytes = size_t{1} << 20;
// A connection closed with a request unread first sends its answer and stops reading for at
// most this long or this many bytes, so the client reads the answer instead of a reset.
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr size_t kLingerBytes = size_t{256} << 20;

// httplib's server with its connection loop (keep-alive, then one request after another)
// written out here, as its SSLServer does, so the socket is known to the handlers.
class ConnectionServer : public httplib::Server {
 private:
  // A connection's socket as httplib reads and writes it.
  class SocketStream final : public httplib::Stream {
   public:
    SocketStream(int fd, int read_timeout_ms, int write_timeout_ms)
        : fd_(fd), read_timeout_ms_(read_timeout_ms), write_timeout_ms_(write_timeout_ms) {}
    bool has_buffered() const { return begin_ < end_; }
    bool is_readable() const override { return has_buffered() || wait(POLLIN, read_timeout_ms_); }
    bool is_writable() const override { return wait(POLLOUT, write_timeout_ms_); }
    void start_request() { delivered_ = 0; }
    size_t delivered() const { return delivered_; }
    // httplib reads request lines a byte at a time: serve them from a buffer.
    ssize_t read(char* ptr, size_t size) override {
      if (delivered_ >= t_chunked_request_limit) {
        t_request_too_large = true;
        return -1;
      }
      size = std::min(size, t_chunked_request_limit - delivered_);
      if (!has_buffered()) {
        if (!wait(POLLIN, read_timeout_ms_)) return -1;
        ssize_t n;
        do n = recv(fd_, buffer_, sizeof buffer_, 0);
        while (n < 0 && errno == EINTR);
        if (n <= 0) return n;
        begin_ = 0;
        end_ = static_cast<size_t>(n);
      }
      const size_t n = std::min(size, end_ - begin_);
      std::memcpy(ptr, buffer_ + begin_, n);
      begin_ += n;
      delivered_ += n;
      return static_cast<ssize_t>(n);
    }
    ssize_t write(const char* ptr, size_t size) override {
      if (!is_writable()) return -1;
      for (;;) {
        const ssize_t n = send(fd_, ptr, size, MSG_NOSIGNAL);
        if (n >= 0 || errno != EINTR) return n;
      }
    }
    void get_remote_ip_and_port(std::string& ip, int& port) const override {
      address(getpeername, ip, port);
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
      address(getsockname, ip, port);
    }
    int socket() const override { return fd_; }

   private:
    bool wait(short events, int timeout_ms) const {
      pollfd p{fd_, events, 0};
      for (;;) {
        const int n = poll(&p, 1, timeout_ms);
        if (n >= 0 || errno != EINTR) return n > 0 && (p.revents & (events | POLLHUP)) != 0;
      }
    }
    void address(int (*get)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
      sockaddr_storage addr{};
      socklen_t len = sizeof addr;
      if (get(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return;
      char host[NI_MAXHOST], serv[NI_MAXSERV];
      if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof host, serv,
                      sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV) != 0)
        return;
      ip = host;
      port = std::atoi(serv);
    }
    int fd_, read_timeout_ms_, write_timeout_ms_;
    char buffer_[4096];
    size_t begin_ = 0, end_ = 0;
    size_t delivered_ = 0;  // bytes of the current request handed to httplib
  };

  // Waits for the next request: the first one of a connection up to the read timeout (a client
  // that just connected may be slow to send under load), later ones up to the keep-alive
  // timeout; false when none comes, the connection ended, or the server is stopping.
  bool next_request(const SocketStream& stream, bool first) const {
    if (stream.has_buffered()) return true;  // a pipelined request
    const auto deadline =
        std::chrono::steady_clock::now() +
        (first ? std::chrono::seconds(std::max<time_t>(read_timeout_sec_, keep_alive_timeout_sec_))
               : std::chrono::seconds(keep_alive_timeout_sec_));
    while (svr_sock_ != INVALID_SOCKET) {
      pollfd p{stream.socket(), POLLIN, 0};
      const int n = poll(&p, 1, 50);
      if (n > 0) return true;  // data, or EOF (the request read then fails and ends it)
      if (n < 0 && errno != EINTR) return false;
      if (std::chrono::steady_clock::now() > deadline) return false;
    }
    return false;
  }

  bool process_and_close_socket(int fd) override {
    t_connection_socket = fd;
    SocketStream stream(fd, static_cast<int>(read_timeout_sec_ * 1000 + read_timeout_usec_ / 1000),
                        static_cast<int>(write_timeout_sec_ * 1000 + write_timeout_usec_ / 1000));
    bool ok = false, refused = false;
    for (size_t left = keep_alive_max_count_;
         left > 0 && next_request(stream, left == keep_alive_max_count_); --left) {
      bool closed = false;
      t_close_connection = t_request_too_large = false;
      t_chunked_request_limit = SIZE_MAX;
      stream.start_request();
      ok = process_request(stream, left == 1, closed, nullptr);
      if (stream.delivered() >= kLargeRequestBytes) malloc_trim(0);
      refused = t_close_connection || t_request_too_large;
      if (!ok || closed || refused) break;
    }
    t_connection_socket = -1;
    if (refused)
      linger(fd);
    else
      shutdown(fd, SHUT_RDWR);
    close(fd);
    return ok;
  }

  // The answer is sent; the client may still be sending the refused request: end our side and
  // read what comes, for a bounded time, before closing (closing with unread bytes would reset
  // the connection, and the client could lose the answer).
  static void linger(int fd) {
    shutdown(fd, SHUT_WR);
    const auto deadline = std::chrono::steady_clock::now() + kLingerTime;
    char sink[16384];
    for (size_t drained = 0; drained < kLingerBytes;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd, POLLIN, 0};
      const int n = poll(&p, 1, static_cast<int>(left.count()));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      const ssize_t got = recv(fd, sink, sizeof sink, 0);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      drained += static_cast<size_t>(got);
    }
  }
};

// What poll says of a client while its answer is being made. A client that shut down only its
// sending side (SHUT_WR, as some clients and proxies do once the request is sent) looks like
// one that closed the socket (a FIN: POLLRDHUP) until something is written to it: a closed
// socket answers data with a reset (POLLHUP / POLLERR), a half-closed one reads it.
enum class PeerState { kConnected, kFinished, kGone };

PeerState peer_state(int fd) {
  if (fd < 0) return PeerState::kConnected;
  pollfd p{fd, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return PeerState::kConnected;
  if (p.revents & (POLLHUP | POLLERR | POLLNVAL)) return PeerState::kGone;
  return (p.revents & POLLRDHUP) ? PeerState::kFinished : PeerState::kConnected;
}

// Tells a client that stopped sending apart from one that went away, without aborting it:
// once its FIN is seen, `probe` writes something it must accept (once), and the reset that a
// closed socket answers with shows at the next poll. True when the client is gone.
struct DisconnectWatch {
  int fd = -1;
  bool probed = false;
  template <typename Probe>
  bool gone(Probe probe) {
    switch (peer_state(fd)) {
      case PeerState::kConnected:
        return false;
      case PeerState::kGone:
        return true;
      case PeerState::kFinished:
        if (!probed) {
          probed = true;
          if (!probe()) return true;
        }
        return false;
    }
    return false;
  }
};

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
  std::vector<std::vector<int32_t>> prompt_ids;  // echo with logprobs
  EngineLoop::Submission submission;
  std::vector<ChoiceOutput> choices;
  std::vector<int64_t> text_offsets;  // completions logprobs: characters written so far
  std::vector<bool> echoed;  // stream, prompt logprobs (echo or prompt_logprobs): its chunk is out
  // Chat with tools, streamed: per choice, what of its text goes out as content or calls.
  std::vector<ToolCallStream> tool_streams;
  DisconnectWatch client;
  std::shared_ptr<void> slot;  // one of the server's generation slots, held until the end
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

// The answer to a body over --max-body-bytes.
ApiError request_too_large() {
  return ApiError(413, "The request body is larger than the server's limit.", "",
                  "invalid_request_error", "request_too_large");
}

// Whether httplib 0.11 reads a body for this method (its expect_content): for the others a
// body sent would be read as the next request.
bool httplib_reads_body(const std::string& method) {
  return method == "POST" || method == "PUT" || method == "PATCH" || method == "DELETE";
}

// The connection closes once this answer is sent: no byte left of its request is read as a
// next one.
void close_after_answer(httplib::Response& res) {
  t_close_connection = true;
  res.set_header("Connection", "close");
}

// Why a request's framing is refused, if it is: several Content-Length headers, Content-Length
// beside Transfer-Encoding (either could end the body where the other does not, and the rest
// would be read as a next request), a Content-Length that is not a decimal number, a
// Transfer-Encoding other than one plain chunked (httplib would read such a body until the
// client closed), or a POST, PUT or PATCH with neither header (likewise).
std::optional<ApiError> framing_error(const httplib::Request& req) {
  const size_t lengths = req.get_header_value_count("Content-Length");
  const size_t encodings = req.get_header_value_count("Transfer-Encoding");
  const bool transfer_encoding = encodings > 0;
  if (lengths > 1) return ApiError(400, "The request has more than one Content-Length header.");
  if (lengths == 1 && transfer_encoding)
    return ApiError(400, "The request has both Content-Length and Transfer-Encoding headers.");
  if (transfer_encoding) {
    std::string coding = encodings == 1 ? req.get_header_value("Transfer-Encoding") : "";
    const size_t first = coding.find_first_not_of(" \t");
    const size_t last = coding.find_last_not_of(" \t");
    coding = first == std::string::npos ? "" : coding.substr(first, last - first + 1);
    std::transform(coding.begin(), coding.end(), coding.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (coding != "chunked")
      return ApiError(501, "Only Transfer-Encoding: chunked is supported, got '" +
                               req.get_header_value("Transfer-Encoding").substr(0, 64) + "'" +
                               (encodings > 1 ? " and more" : "") + ".");
  }
  if (lengths == 1) {
    const std::string value = req.get_header_value("Content-Length");
    if (value.empty() || value.size() > 19 ||
        value.find_first_not_of("0123456789") != std::string::npos)
      return ApiError(400, "Content-Length must be a decimal number of bytes, got '" +
                               value.substr(0, 32) + "'.");
  }
  // (DELETE too reads a body, but one without either header is a plain DELETE: its 405 waits
  // for httplib's read.)
  const bool body_method = httplib_reads_body(req.method) && req.method != "DELETE";
  if (body_method && lengths == 0 && !transfer_encoding)
    return ApiError(411,
                    "A " + req.method +
                        " request needs a Content-Length or Transfer-Encoding: chunked "
                        "header.",
                    "", "invalid_request_error", "length_required");
  return std::nullopt;
}

}  // namespace

struct HttpServer::Impl {
  EngineLoop& loop;
  Metrics& metrics;
  ServingModel model;
  HttpServerOptions options;
  ServerLimits limits;
  std::optional<structured::GrammarCache> grammars;  // with a tokenizer
  ConnectionServer server;
  // Generations in flight, each holding an HTTP worker (streams for as long as they run); at
  // most options.threads, so the kControlWorkers beyond them always answer /health.
  std::atomic<int> generations{0};
  static constexpr int kControlWorkers = 4;

  Impl(EngineLoop& l, Metrics& m, ServingModel sm, HttpServerOptions o)
      : loop(l), metrics(m), model(std::move(sm)), options(std::move(o)) {
    limits.served_model_name = options.served_model_name;
    limits.max_model_len = loop.config().max_model_len;
    limits.vocab_size = loop.vocab_size();
    limits.tool_call_parser = tool_call_parser_from_name(options.tool_call_parser);
    limits.default_sampling = options.default_sampling;
    limits.default_max_tokens = options.default_max_tokens;
    if (model.tokenizer) {
      grammars.emplace(
          std::make_shared<const structured::TokenVocabulary>(structured::tokenizer_vocabulary(
              *model.tokenizer, limits.vocab_size, loop.eos_token_ids())));
      limits.grammars = &*grammars;
    }
    routes();
  }

  // Runs a handler; ApiError becomes its JSON answer, anything else a 500.
  template <typename F>
  httplib::Server::Handler guarded(F handler) {
    return [this, handler](const httplib::Request& req, httplib::Response& res) {
      try {
        // httplib held a chunked body only to twice the limit (its framing): the body itself.
        if (req.body.size() > options.max_body_bytes) throw request_too_large();
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
      return new httplib::ThreadPool(static_cast<size_t>(threads + kControlWorkers));
    };
    server.set_payload_max_length(options.max_body_bytes);
    server.set_keep_alive_timeout(2);  // shutdown waits this long for idle keep-alive reads
    // Runs before httplib reads the body: requests whose framing could smuggle a second
    // request or hang the connection are refused and their connection closed (RFC 9112 6.3).
    server.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      const size_t most = std::numeric_limits<size_t>::max();
      if (req.has_header("Transfer-Encoding"))
        t_chunked_request_limit = options.max_body_bytes > (most - kHeaderBytes) / 2
                                      ? most
                                      : 2 * options.max_body_bytes + kHeaderBytes;
      // httplib reads no body for GET, HEAD or OPTIONS: one sent with them would be read as the
      // next request. Such a request is answered, then its connection closes.
      if (!httplib_reads_body(req.method) &&
          (req.has_header("Transfer-Encoding") ||
           (req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0"))) {
        close_after_answer(res);
      }
      if (const std::optional<ApiError> refusal = framing_error(req)) {
        close_after_answer(res);
        send_error(res, *refusal);
        return httplib::Server::HandlerResponse::Handled;
      }
      if (options.api_key.empty() || req.path.rfind("/v1", 0) != 0)
        return httplib::Server::HandlerResponse::Unhandled;  // /health, /metrics stay open
      if (req.get_header_value("Authorization") == "Bearer " + options.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      close_after_answer(res);  // its body is not read
      send_error(res, ApiError(401, "Incorrect or missing API key.", "", "invalid_request_error",
                               "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    });
    server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty() || res.is_chunked_content_provider_) return;
      if (t_request_too_large) res.status = 413;  // a chunked body past the limit
      if (res.status == 413 || res.status == 400) {
        close_after_answer(res);  // the rest of the request is unread
      }
      if (res.status == 404)
        send_error(
            res, ApiError(404, "Not found: " + req.method + " " + req.path, "", "not_found_error"));
      else if (res.status == 413)
        send_error(res, request_too_large());
      else if (res.status == 400)  // the HTTP layer could not read the request
        send_error(res, ApiError(400,
                                 "The HTTP request could not be read: a missing or invalid "
                                 "Content-Length, an unsupported Content-Encoding (such as gzip), "
                                 "or a malformed request line or header."));
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
    // vLLM's tokenizer endpoints, outside /v1 as in vLLM (so --api-key does not guard them).
    server.Post("/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
                  send_json(res, 200,
                            tokenize_response(parse_request_body(req.body), limits, model.tokenizer,
                                              model.chat_template));
                }));
    server.Post("/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
                  send_json(
                      res, 200,
                      detokenize_response(parse_request_body(req.body), limits, model.tokenizer));
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
    server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const std::string failure = loop.failure();
      if (!failure.empty()) {
        send_error(res, ApiError(503, "The engine cannot serve requests: " + failure, "",
                                 "service_unavailable", "engine_failed"));
        return;
      }
      res.status = 200;
      res.set_content("", "text/plain");
    });
    server.Get("/version", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, {{"version", kVersion}});
    });
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      const LoopSnapshot s = loop.snapshot();
      const LoadGauges load{s.engine.running,
                            s.engine.waiting,
                            s.engine.kv_blocks_total,
                            s.engine.kv_blocks_free,
                            s.engine.prefix_cache_queries,
                            s.engine.prefix_cache_hits,
                            s.engine.preemptions};
      res.status = 200;
      res.set_content(metrics.render(load), "text/plain; version=0.0.4");
    });
    // The right path with the wrong method: 405.
    const auto not_allowed = [](const httplib::Request& req, httplib::Response& res) {
      send_error(res, ApiError(405, "Method " + req.method + " not allowed on " + req.path, "",
                               "invalid_request_error", "method_not_allowed"));
    };
    for (const char* path :
         {"/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize"}) {
      server.Get(path, not_allowed);
      server.Put(path, not_allowed);
      server.Delete(path, not_allowed);
      server.Patch(path, not_allowed);
      server.Options(path, not_allowed);
    }
    for (const char* path : {"/v1/models", "/health", "/version", "/metrics"}) {
      server.Post(path, not_allowed);
      server.Put(path, not_allowed);
      server.Delete(path, not_allowed);
      server.Patch(path, not_allowed);
      server.Options(path, not_allowed);
    }
  }

  // Counts a generation in; 503 when options.threads are running already.
  std::shared_ptr<void> take_generation_slot() {
    if (generations.fetch_add(1) >= options.threads) {
      generations.fetch_sub(1);
      throw ApiError(503,
                     "The server is running its limit of " + std::to_string(options.threads) +
                         " generations at once (--max-connections); retry later.",
                     "", "service_unavailable", "server_busy");
    }
    return std::shared_ptr<void>(nullptr, [this](void*) { generations.fetch_sub(1); });
  }

  void generate(const httplib::Request& req, httplib::Response& res, Endpoint endpoint) {
    const json body = parse_request_body(req.body);  // numbers past a double are a 400 too
    auto g = std::make_shared<Generation>();
    g->slot = take_generation_slot();
    g->request = endpoint == Endpoint::kCompletions ? parse_completion_request(body, limits)
                                                    : parse_chat_request(body, limits);
    const ApiRequest& r = g->request;
    if (endpoint == Endpoint::kChatCompletions && !model.chat_template)
      bad_request("Chat completions are not available: " + model.chat_unavailable, "messages");
    const std::vector<std::vector<int32_t>> prompts =
        tokenize_prompts(r, model.tokenizer, model.chat_template);
    if (r.echo && !model.tokenizer)
      bad_request(
          "echo needs the prompt's text, and this model folder has no tokenizer.json to decode "
          "it.",
          "echo");

    std::vector<GenerationRequest> requests;
    for (size_t p = 0; p < prompts.size(); ++p) {
      const int32_t max_tokens =
          resolve_max_tokens(r, static_cast<int32_t>(prompts[p].size()), limits.max_model_len,
                             limits.default_max_tokens);
      g->prompt_tokens.push_back(static_cast<int32_t>(prompts[p].size()));
      std::string text;
      if (r.echo) text = echo_text(r, p, prompts[p], *model.tokenizer);
      g->prompt_texts.push_back(std::move(text));
      if (r.echo && r.params.logprobs >= 0) g->prompt_ids.push_back(prompts[p]);
      for (int32_t j = 0; j < r.candidates(); ++j) {
        GenerationRequest e;
        e.prompt = prompts[p];
        e.params = r.params;
        e.params.max_tokens = max_tokens;
        // best_of ranks the candidates by their sampled tokens' logprobs.
        if (r.candidates() > r.n) e.params.logprobs = std::max(e.params.logprobs, 0);
        e.prompt_logprobs = engine_prompt_logprobs(r);
        e.prompt_only = r.prompt_only;
        e.grammar = r.grammar;
        e.cache_salt = r.cache_salt;
        if (r.params.seed) e.params.seed = *r.params.seed + static_cast<uint64_t>(j);
        requests.push_back(std::move(e));
      }
    }
    g->header = {random_id(endpoint == Endpoint::kCompletions ? "cmpl" : "chatcmpl"),
                 unix_seconds(), r.model};
    g->token_text = token_text_for(model.tokenizer);
    g->choices.resize(requests.size());
    g->text_offsets.assign(requests.size(), 0);
    g->echoed.assign(requests.size(), false);
    if (r.stream && r.tool_choice != ToolChoice::kNone) {
      for (size_t i = 0; i < requests.size(); ++i)
        g->tool_streams.emplace_back(r.tool_choice, r.tool_call_parser, r.tool_name);
    }
    g->client.fd = t_connection_socket;
    // A refused request throws a 400 here; the loop's output thread makes the text.
    g->submission = loop.submit(std::move(requests), model.tokenizer);
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
      // A 1xx answer is one every HTTP/1.1 client must read past (RFC 9110, 15.2); an HTTP/1.0
      // client must get none, so one that stopped sending keeps its request to the end.
      if (!done && g->client.gone([fd = g->client.fd, http11 = req.version == "HTTP/1.1"] {
            static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
            return !http11 || send(fd, kContinue, sizeof kContinue - 1, MSG_NOSIGNAL) > 0;
          }))
        return;  // ~Generation aborts; nobody reads an answer
    }
    g->finished = true;
    for (const ChoiceOutput& c : g->choices)
      if (c.finish_reason == FinishReason::kError)
        throw ApiError(500, "Generation failed: " + c.error);
    send_json(res, 200,
              endpoint == Endpoint::kCompletions
                  ? completion_response(g->header, r, g->choices, g->prompt_texts, g->prompt_tokens,
                                        g->token_text, g->prompt_ids)
                  : chat_response(g->header, r, g->choices, g->prompt_tokens, g->token_text));
  }

  // A chat choice with tools: content, and each call's start and arguments as the model
  // writes them (markup and what may begin a call held back), then finish_reason
  // "tool_calls" when the output ended by itself and called tools. False when a write failed.
  // With logprobs, an output's tokens' logprobs go with the first chunk it gives (an empty
  // content delta where all its text is held back): each token's once, in order, though held
  // text comes in a later chunk than its logprobs.
  template <typename Write>
  static bool stream_tool_output(Generation& g, int32_t choice, const RequestOutput& out,
                                 const Write& write) {
    ToolCallStream& ts = g.tool_streams[static_cast<size_t>(choice)];
    json logprobs = nullptr;
    if (g.request.params.logprobs >= 0 && !out.new_logprobs.empty())
      logprobs = chat_logprobs_json(out.new_logprobs, g.token_text);
    const auto send_held_logprobs = [&] {
      return logprobs.is_null() || write(sse_event(chat_content_chunk(
                                       g.header, choice, "", std::exchange(logprobs, nullptr))));
    };
    const auto send = [&](const std::vector<ToolStreamEvent>& events) {
      for (const ToolStreamEvent& e : events) {
        // parallel_tool_calls false: calls after the first are not sent (as not answered).
        if (!g.request.parallel_tool_calls && e.kind != ToolStreamEvent::Kind::kContent &&
            e.call > 0)
          continue;
        json chunk;
        switch (e.kind) {
          case ToolStreamEvent::Kind::kContent:
            chunk = chat_content_chunk(g.header, choice, e.text, nullptr);
            break;
          case ToolStreamEvent::Kind::kCallStart:
            chunk = chat_tool_call_start_chunk(g.header, choice, e.call, e.text);
            break;
          case ToolStreamEvent::Kind::kArguments:
            chunk = chat_tool_arguments_chunk(g.header, choice, e.call, e.text);
            break;
        }
        if (!logprobs.is_null()) chunk["choices"][0]["logprobs"] = std::exchange(logprobs, nullptr);
        if (!write(sse_event(chunk))) return false;
      }
      return true;
    };
    if (!send(ts.push(out.new_text))) return false;
    if (!out.finished) return send_held_logprobs();
    // What was held back: text that did not become a call is content.
    if (!send(ts.finish()) || !send_held_logprobs()) return false;
    const bool called = out.finish_reason == FinishReason::kStop && ts.calls_started() > 0;
    return write(sse_event(
        called ? chat_tool_finish_chunk(g.header, choice)
               : chat_finish_chunk(g.header, choice, out.finish_reason,
                                   stop_reason_json(out.stop_reason, out.stop_token_id))));
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
    // With prompt logprobs, a completion's first chunk (the echo, if any) waits for them: they
    // come with the first output.
    const bool prompt_chunk = completion_stream_waits_for_prompt(r);
    // A chat choice's role chunk goes out with its first output, after the prompt is computed
    // (as vLLM sends it), so a client timing the first chunk times the first token.
    std::vector<bool> role_sent(g.choices.size(), false);
    const auto send_role = [&](size_t i) {
      if (!chat || role_sent[i]) return true;
      role_sent[i] = true;
      return write(sse_event(chat_role_chunk(g.header, static_cast<int32_t>(i))));
    };
    for (size_t i = 0; i < g.choices.size(); ++i) {
      const auto index = static_cast<int32_t>(i);
      if (!chat && r.echo && !prompt_chunk) {
        const std::string& prompt = g.prompt_texts[i / static_cast<size_t>(r.n)];
        g.text_offsets[i] = text_length(prompt);  // no logprobs here: not waiting for the prompt
        json logprobs = nullptr;
        if (!write(sse_event(
                completion_chunk(g.header, index, prompt, FinishReason::kNone, logprobs))))
          return gone();
      }
    }
    std::vector<OutputChannel::Item> items;
    for (bool done = false; !done;) {
      items.clear();
      done = g.submission.channel->pop(items, kPollInterval);
      // An SSE comment line, which clients skip.
      if (!done && g.client.gone([&] { return write(": \n\n"); })) return gone();
      for (const OutputChannel::Item& item : items) {
        const RequestOutput& out = item.output;
        const auto i = static_cast<size_t>(item.choice);
        g.choices[i].append(out);
        if (prompt_chunk && !g.echoed[i]) {
          g.echoed[i] = true;
          const size_t prompt = i / static_cast<size_t>(r.n);
          static const std::vector<int32_t> kNoIds;
          const std::vector<int32_t>& ids =
              prompt < g.prompt_ids.size() ? g.prompt_ids[prompt] : kNoIds;
          if (r.echo)
            g.text_offsets[i] = echo_text_offset(g.prompt_texts[prompt], ids, g.token_text);
          if (!write(sse_event(completion_prompt_chunk(g.header, r, item.choice,
                                                       g.prompt_texts[prompt], ids,
                                                       out.prompt_logprobs, g.token_text))))
            return gone();
        }
        const bool has_piece = !out.new_text.empty() || !out.new_tokens.empty();
        if (out.finished && out.finish_reason == FinishReason::kError) {
          if (!write(sse_event(ApiError(500, "Generation failed: " + out.error).to_json())))
            return gone();
          continue;
        }
        if (chat && !send_role(i)) return gone();
        if (chat && !g.tool_streams.empty()) {
          if (!stream_tool_output(g, item.choice, out, write)) return gone();
        } else if (chat) {
          if (has_piece) {
            json logprobs = nullptr;
            if (r.params.logprobs >= 0)
              logprobs = chat_logprobs_json(out.new_logprobs, g.token_text);
            if (!write(
                    sse_event(chat_content_chunk(g.header, item.choice, out.new_text, logprobs))))
              return gone();
          }
          if (out.finished && !write(sse_event(chat_finish_chunk(
                                  g.header, item.choice, out.finish_reason,
                                  stop_reason_json(out.stop_reason, out.stop_token_id)))))
            return gone();
        } else if (has_piece || out.finished) {
          json logprobs = nullptr;
          if (r.params.logprobs >= 0) {
            logprobs = completion_logprobs_json(out.new_logprobs, g.token_text, g.text_offsets[i]);
            for (const SampledToken& t : out.new_logprobs)
              g.text_offsets[i] += text_length(g.token_text(t.token));
          }
          if (!write(sse_event(completion_chunk(
                  g.header, item.choice, out.new_text,
                  out.finished ? out.finish_reason : FinishReason::kNone, logprobs,
                  out.finished ? stop_reason_json(out.stop_reason, out.stop_token_id)
                               : json(nullptr)))))
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
