// `l2kv serve`'s HTTP front over real sockets on 127.0.0.1, engine on the CPU backend with a
// runner slowed (or broken) on purpose: /health answers while every generation slot streams
// and says 503 with the reason once the device is lost; a client that only shut down its
// sending side gets its whole answer; one that closed its socket has its request aborted and
// its KV blocks freed.
#include "l2kv/server/http_server.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "l2kv/core/error.h"
#include "l2kv/engine/cpu_runner.h"
#include "l2kv/model/cpu_model.h"
#include "l2kv/server/engine_loop.h"
#include "l2kv/server/metrics.h"

namespace l2kv::server {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
const fs::path kFixture = fs::path(L2KV_TEST_SOURCE_DIR) / "model" / "fixtures" / "llama3-gqa";

// The CPU runner, `step_ms` slower per step (so a stream lasts long enough to watch), and
// from step `lost_at` on a lost device (every step throws, device_fault() says why).
class TestRunner : public ModelRunner {
 public:
  TestRunner(int step_ms, int lost_at)
      : inner_(std::make_shared<const CpuModel>(kFixture)), step_ms_(step_ms), lost_at_(lost_at) {}
  const ModelConfig& config() const override { return inner_.config(); }
  std::string device_name() const override { return "cpu (test)"; }
  KvCacheSizing prepare(int32_t a, int32_t b, int32_t c, int32_t d, double e) override {
    return inner_.prepare(a, b, c, d, e);
  }
  void allocate_kv_cache(int32_t n) override { inner_.allocate_kv_cache(n); }
  std::vector<SampledToken> execute(const StepInput& step) override {
    std::this_thread::sleep_for(milliseconds(step_ms_));
    if (lost_at_ > 0 && ++calls_ >= lost_at_)
      throw Error("CUDA error cudaErrorIllegalAddress (simulated)");
    return inner_.execute(step);
  }
  std::string device_fault() override {
    return lost_at_ > 0 && calls_ >= lost_at_ ? "simulated sticky error" : "";
  }

 private:
  CpuRunner inner_;
  int step_ms_, lost_at_, calls_ = 0;
};

// An engine loop and an HTTP server on a free port, served from a thread.
class Server {
 public:
  Server(int threads, int step_ms, int lost_at = 0) : metrics_("m") {
    loop_ = std::make_unique<EngineLoop>(
        [=] {
          EngineConfig c;
          c.max_model_len = 256;
          c.num_kv_blocks = 64;
          c.max_num_seqs = 8;
          return std::make_unique<Engine>(std::make_unique<TestRunner>(step_ms, lost_at), nullptr,
                                          c);
        },
        &metrics_);
    HttpServerOptions o;
    o.port = 0;
    o.served_model_name = "m";
    o.threads = threads;
    http_ = std::make_unique<HttpServer>(*loop_, metrics_, ServingModel{}, o);
    port_ = http_->bind();
    thread_ = std::thread([this] { http_->listen(); });
  }
  ~Server() {
    loop_->shutdown();
    http_->stop();
    thread_.join();
  }
  int port() const { return port_; }
  EngineLoop& loop() { return *loop_; }

  // Waits until no request is in flight and every KV block is free; false after `ms`.
  bool idle_within(int ms) {
    const auto deadline = Clock::now() + milliseconds(ms);
    while (Clock::now() < deadline) {
      const LoopSnapshot s = loop_->snapshot();
      if (s.requests_in_flight == 0 && s.engine.kv_blocks_free == s.engine.kv_blocks_total &&
          s.engine.running + s.engine.waiting == 0)
        return true;
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  }

 private:
  Metrics metrics_;
  std::unique_ptr<EngineLoop> loop_;
  std::unique_ptr<HttpServer> http_;
  int port_ = 0;
  std::thread thread_;
};

int connect_to(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw std::runtime_error("cannot connect to 127.0.0.1:" + std::to_string(port));
  return fd;
}

std::string http_request(const std::string& method, const std::string& path,
                         const std::string& body = "") {
  std::string r = method + " " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
  if (!body.empty())
    r +=
        "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  return r + "\r\n" + body;
}

void send_all(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) throw std::runtime_error("send failed");
    sent += static_cast<size_t>(n);
  }
}

// Reads until the server closes, `until` appears, or `ms` pass; returns what arrived.
std::string read_from(int fd, int ms, const std::string& until = "") {
  std::string got;
  const auto deadline = Clock::now() + milliseconds(ms);
  char buffer[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) <= 0) break;
    const ssize_t n = recv(fd, buffer, sizeof buffer, 0);
    if (n <= 0) break;
    got.append(buffer, static_cast<size_t>(n));
    if (!until.empty() && got.find(until) != std::string::npos) break;
  }
  return got;
}

// The status of the final answer (past any 1xx).
int final_status(const std::string& response) {
  size_t at = 0;
  while (response.compare(at, 9, "HTTP/1.1 ") == 0) {
    const int status = std::atoi(response.c_str() + at + 9);
    if (status >= 200) return status;
    const size_t end = response.find("\r\n\r\n", at);
    if (end == std::string::npos) return 0;
    at = end + 4;
  }
  return 0;
}

std::string completion(int max_tokens, bool stream) {
  return nlohmann::json{{"model", "m"},     {"prompt", {1, 2, 3, 4, 5}}, {"max_tokens", max_tokens},
                        {"temperature", 0}, {"ignore_eos", true},        {"stream", stream}}
      .dump();
}

// A generation request on its own socket; returns the socket.
int start(int port, int max_tokens, bool stream) {
  const int fd = connect_to(port);
  send_all(fd, http_request("POST", "/v1/completions", completion(max_tokens, stream)));
  return fd;
}

std::string get(int port, const std::string& path, int ms) {
  const int fd = connect_to(port);
  send_all(fd, http_request("GET", path));
  std::string got = read_from(fd, ms);
  close(fd);
  return got;
}

// Item: /health is answered while every generation slot is held by a stream, and a
// generation past the slots is told so at once (503) instead of waiting for a worker.
TEST(HttpServer, HealthAnswersWhileEveryGenerationSlotStreams) {
  Server server(/*threads=*/2, /*step_ms=*/20);
  const int a = start(server.port(), 240, true);
  const int b = start(server.port(), 240, true);
  EXPECT_NE(read_from(a, 5000, "data: ").find("data: "), std::string::npos);
  EXPECT_NE(read_from(b, 5000, "data: ").find("data: "), std::string::npos);

  const auto before = Clock::now();
  const std::string health = get(server.port(), "/health", 2000);
  EXPECT_EQ(final_status(health), 200) << health;
  EXPECT_LT(Clock::now() - before, milliseconds(1000));
  EXPECT_EQ(final_status(get(server.port(), "/metrics", 2000)), 200);

  const int c = start(server.port(), 4, false);
  const std::string busy = read_from(c, 2000);
  close(c);
  EXPECT_EQ(final_status(busy), 503) << busy;
  EXPECT_NE(busy.find("--max-connections"), std::string::npos) << busy;

  close(a);
  close(b);
  EXPECT_TRUE(server.idle_within(3000));
  // The slots are free again.
  const int d = start(server.port(), 4, false);
  const std::string answer = read_from(d, 5000);
  close(d);
  EXPECT_EQ(final_status(answer), 200) << answer;
}

// Item: once the device is lost, /health and new requests get 503 with the reason; the
// request in flight gets an error, not a hang.
TEST(HttpServer, LostDeviceTurnsHealthAnd503) {
  Server server(/*threads=*/4, /*step_ms=*/1, /*lost_at=*/3);
  EXPECT_EQ(final_status(get(server.port(), "/health", 2000)), 200);
  const int a = start(server.port(), 50, false);
  const std::string failed = read_from(a, 5000);
  close(a);
  EXPECT_EQ(final_status(failed), 500) << failed;
  EXPECT_NE(failed.find("simulated sticky error"), std::string::npos) << failed;

  const std::string health = get(server.port(), "/health", 2000);
  EXPECT_EQ(final_status(health), 503) << health;
  EXPECT_NE(health.find("simulated sticky error"), std::string::npos) << health;
  const int b = start(server.port(), 4, true);
  const std::string refused = read_from(b, 2000);
  close(b);
  EXPECT_EQ(final_status(refused), 503) << refused;
  EXPECT_NE(refused.find("simulated sticky error"), std::string::npos) << refused;
  EXPECT_TRUE(server.idle_within(1000));
}

// Item: a client that shuts down its sending side after the request still gets its whole
// answer, streamed or not.
TEST(HttpServer, HalfClosedClientGetsItsWholeAnswer) {
  Server server(/*threads=*/4, /*step_ms=*/10);
  for (const bool stream : {false, true}) {
    const int fd = start(server.port(), 30, stream);
    ASSERT_EQ(shutdown(fd, SHUT_WR), 0);
    const std::string answer = read_from(fd, 10000);
    close(fd);
    ASSERT_EQ(final_status(answer), 200) << answer;
    if (stream) {
      EXPECT_NE(answer.find("data: [DONE]"), std::string::npos) << answer;
      EXPECT_NE(answer.find("\"finish_reason\":\"length\""), std::string::npos) << answer;
    } else {
      const nlohmann::json body = nlohmann::json::parse(answer.substr(answer.rfind("\r\n\r\n")));
      EXPECT_EQ(body["usage"]["completion_tokens"], 30) << answer;
      EXPECT_EQ(body["choices"][0]["finish_reason"], "length") << answer;
    }
  }
  EXPECT_TRUE(server.idle_within(1000));
}

// Item: a client that closes its socket mid-answer has its request aborted at once and its
// KV blocks freed (the steps left would take 4 s).
TEST(HttpServer, ClosedClientIsAbortedAndItsBlocksFreed) {
  Server server(/*threads=*/4, /*step_ms=*/20);
  for (const bool stream : {true, false}) {
    const int fd = start(server.port(), 200, stream);
    if (stream) {
      EXPECT_NE(read_from(fd, 5000, "data: ").find("data: "), std::string::npos);
    }
    const auto deadline = Clock::now() + milliseconds(5000);
    while (server.loop().snapshot().requests_in_flight == 0 && Clock::now() < deadline)
      std::this_thread::sleep_for(milliseconds(5));
    std::this_thread::sleep_for(milliseconds(100));  // a few tokens in
    ASSERT_EQ(server.loop().snapshot().requests_in_flight, 1);
    close(fd);
    EXPECT_TRUE(server.idle_within(1500)) << (stream ? "stream" : "non-stream");
  }
  const std::string metrics = get(server.port(), "/metrics", 2000);
  EXPECT_NE(metrics.find("l2kv:kv_blocks_used{model_name=\"m\"} 0"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("finished_reason=\"abort\"} 2"), std::string::npos) << metrics;
}

}  // namespace
}  // namespace l2kv::server
