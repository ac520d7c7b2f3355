#include "l2kv/cli/bench_serve_command.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "l2kv/cli/bench_serve_workload.h"
#include "l2kv/cli/flags.h"
#include "l2kv/cli/latency_stats.h"
#include "l2kv/core/error.h"

namespace l2kv::cli {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::ordered_json;

struct BenchServeOptions {
  std::string base_url = "http://127.0.0.1:8000";
  std::string endpoint = "/v1/completions";
  std::string model;  // empty = the first id of GET /v1/models
  WorkloadOptions w;  // the prompts and request bodies
  double request_rate = std::numeric_limits<double>::infinity();
  int32_t max_concurrency = 0;  // 0 = no cap
  std::string api_key;
  std::string json_path;
  double timeout_s = 600;
  bool progress = true;
  std::string command_line;
};

// Beyond this many threads a run without --max-concurrency is capped (one thread per request).
constexpr int32_t kMaxWorkers = 4096;
// Error bodies and non-SSE responses are quoted up to this many bytes.
constexpr size_t kQuoteBytes = 300;

// "http://host:port/prefix" -> the client's "http://host:port" and the path prefix.
struct ServerUrl {
  std::string scheme_host_port, prefix;
};

ServerUrl parse_base_url(std::string url) {
  while (!url.empty() && url.back() == '/') url.pop_back();
  const size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos ||
      (url.compare(0, scheme_end, "http") != 0 && url.compare(0, scheme_end, "https") != 0))
    throw Error("--base-url must start with http:// or https://, got '" + url + "'");
  const size_t path = url.find('/', scheme_end + 3);
  if (path == std::string::npos) return {url, ""};
  return {url.substr(0, path), url.substr(path)};
}

std::string quote(const std::string& text) {
  std::string q = text.substr(0, kQuoteBytes);
  if (text.size() > kQuoteBytes) q += "...";
  return q;
}

std::unique_ptr<httplib::Client> make_client(const ServerUrl& url, const BenchServeOptions& o) {
  auto client = std::make_unique<httplib::Client>(url.scheme_host_port);
  if (!client->is_valid()) throw Error("cannot make an HTTP client for '" + o.base_url + "'");
  const auto timeout = std::chrono::duration<double>(o.timeout_s);
  client->set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(
      std::min(timeout, std::chrono::duration<double>(30))));
  client->set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  client->set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(timeout));
  client->set_keep_alive(true);
  if (!o.api_key.empty()) client->set_bearer_token_auth(o.api_key);
  return client;
}

// GET /v1/models and the first id: the server's one model, as `vllm bench serve` does.
std::string first_model_id(httplib::Client& client, const ServerUrl& url) {
  const std::string path = url.prefix + "/v1/models";
  const httplib::Result res = client.Get(path);
  if (!res)
    throw Error("cannot reach " + url.scheme_host_port + path + ": " +
                httplib::to_string(res.error()) + " (is the server up?)");
  if (res->status != 200)
    throw Error("GET " + url.scheme_host_port + path + " answered HTTP " +
                std::to_string(res->status) + ": " + quote(res->body));
  const auto body = nlohmann::json::parse(res->body, nullptr, false);
  if (body.is_discarded() || !body.contains("data") || !body["data"].is_array() ||
      body["data"].empty() || !body["data"][0].contains("id") || !body["data"][0]["id"].is_string())
    throw Error("GET " + url.scheme_host_port + path +
                " is not an OpenAI model list: " + quote(res->body));
  return body["data"][0]["id"].get<std::string>();
}

// Splits a server-sent-event stream into `data:` payloads and reads each as an OpenAI chunk.
class StreamReader {
 public:
  explicit StreamReader(bool chat) : chat_(chat) {}

  // Takes the next bytes, received at `now_s`; false once the stream is known to be bad.
  bool feed(const char* data, size_t n, double now_s, RequestTiming& t) {
    if (raw_.size() < kQuoteBytes) raw_.append(data, std::min(n, kQuoteBytes - raw_.size()));
    pending_.append(data, n);
    size_t start = 0;
    for (size_t eol; (eol = pending_.find('\n', start)) != std::string::npos; start = eol + 1) {
      std::string_view line(pending_.data() + start, eol - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (!on_line(line, now_s, t)) return false;
    }
    pending_.erase(0, start);
    return true;
  }

  bool done() const { return done_; }
  int64_t chunks() const { return chunks_; }
  bool saw_usage() const { return saw_usage_; }
  const std::string& raw() const { return raw_; }
  // The answer so far: a chat's content or a completion's text (n = 1: choice 0 only).
  const std::string& text() const { return text_; }

 private:
  bool on_line(std::string_view line, double now_s, RequestTiming& t) {
    if (line.substr(0, 5) != "data:") return true;  // blank separators, comments, event names
    line.remove_prefix(5);
    while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    if (line == "[DONE]") {
      done_ = true;
      return true;
    }
    const auto chunk = nlohmann::json::parse(line, nullptr, false);
    if (chunk.is_discarded() || !chunk.is_object()) {
      t.error = "not an OpenAI stream chunk: " + quote(std::string(line));
      return false;
    }
    if (chunk.contains("error")) {
      t.error = "error in the stream: " + quote(chunk["error"].dump());
      return false;
    }
    if (chunk.contains("choices") && chunk["choices"].is_array() && !chunk["choices"].empty()) {
      const auto& choice = chunk["choices"][0];
      if (text_of(choice)) {
        t.chunk_s.push_back(now_s);
        ++chunks_;
        const nlohmann::json& holder = chat_ ? choice["delta"] : choice;
        const char* key = chat_ ? "content" : "text";
        if (holder.contains(key) && holder[key].is_string())
          text_ += holder[key].get_ref<const std::string&>();
      }
    }
    if (chunk.contains("usage") && chunk["usage"].is_object()) {
      const auto& usage = chunk["usage"];
      if (usage.contains("prompt_tokens") && usage["prompt_tokens"].is_number_integer())
        t.prompt_tokens = usage["prompt_tokens"].get<int64_t>();
      if (usage.contains("completion_tokens") && usage["completion_tokens"].is_number_integer()) {
        t.output_tokens = usage["completion_tokens"].get<int64_t>();
        saw_usage_ = true;
      }
    }
    return true;
  }

  // Whether a choice carries output (a chat delta's content or reasoning, or a completion's
  // text); role-only and finish-only chunks carry none. A completion chunk with empty text
  // before the finish still marks a token, as vLLM's benchmark counts it: a server without a
  // tokenizer streams its tokens so.
  bool text_of(const nlohmann::json& choice) const {
    auto non_empty = [](const nlohmann::json& obj, const char* key) {
      return obj.is_object() && obj.contains(key) && obj[key].is_string() &&
             !obj[key].get_ref<const std::string&>().empty();
    };
    if (chat_)
      return choice.contains("delta") && (non_empty(choice["delta"], "content") ||
                                          non_empty(choice["delta"], "reasoning_content"));
    const bool finishing = choice.contains("finish_reason") && !choice["finish_reason"].is_null();
    return non_empty(choice, "text") ||
           (!finishing && choice.contains("text") && choice["text"].is_string());
  }

  bool chat_;
  std::string pending_, raw_, text_;
  bool done_ = false, saw_usage_ = false;
  int64_t chunks_ = 0;
};

// Sends one streaming request and fills `t` (times from `start`); `answer`, when given, gets
// the answer's text.
void send_request(httplib::Client& client, const std::string& path, const std::string& body,
                  bool chat, int64_t input_len, Clock::time_point start, RequestTiming& t,
                  std::string* answer = nullptr) {
  auto now_s = [start] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  StreamReader reader(chat);
  int status = 0;
  std::string error_body;
  httplib::Request req;
  req.method = "POST";
  req.path = path;
  req.body = body;
  req.set_header("Content-Type", "application/json");
  req.set_header("Accept", "text/event-stream");
  req.response_handler = [&status](const httplib::Response& res) {
    status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (status != 200) {
      if (error_body.size() < kQuoteBytes) error_body.append(data, n);
      return true;
    }
    return reader.feed(data, n, now_s(), t);
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  t.send_s = now_s();
  const bool sent = client.send(req, res, err);
  t.end_s = now_s();
  if (answer) *answer = reader.text();
  t.prompt_tokens = t.prompt_tokens ? t.prompt_tokens : input_len;
  if (!reader.saw_usage()) t.output_tokens = reader.chunks();
  if (!t.error.empty()) return;  // a bad chunk: the reader said why
  if (!sent) {
    t.error = "request failed: " + httplib::to_string(err) +
              (err == httplib::Error::Read ? " (the connection closed, or --timeout passed with "
                                             "no bytes from the server)"
                                           : "");
    return;
  }
  if (status != 200) {
    t.error = "HTTP " + std::to_string(status) + ": " + quote(error_body);
    return;
  }
  // A stream cut before its [DONE] did not deliver its answer: a failure, not a short success.
  if (!reader.done()) {
    t.error = reader.chunks() == 0
                  ? "no server-sent events ending in [DONE] in the response: " + quote(reader.raw())
                  : "the stream ended after " + std::to_string(reader.chunks()) +
                        " chunks without its [DONE]";
    return;
  }
  t.success = true;
}

std::string today() {
  char buf[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::gmtime(&now));
  return buf;
}

void print_progress(int32_t done, int32_t failed, int32_t total, double elapsed_s) {
  constexpr int kWidth = 30;
  const int filled = total ? kWidth * done / total : kWidth;
  std::fprintf(stderr, "\r[%s%s] %d/%d requests, %d failed, %.1f s ",
               std::string(static_cast<size_t>(filled), '#').c_str(),
               std::string(static_cast<size_t>(kWidth - filled), '.').c_str(), done, total, failed,
               elapsed_s);
}

void print_section(const char* title, char fill) {
  const std::string t = title;
  const size_t left = (50 - std::min<size_t>(50, t.size())) / 2;
  const size_t right = 50 - std::min<size_t>(50, t.size()) - left;
  std::printf("%s%s%s\n", std::string(left, fill).c_str(), t.c_str(),
              std::string(right, fill).c_str());
}

void print_latency(const char* title, const char* name, const Summary& s) {
  print_section(title, '-');
  const std::pair<const char*, double> rows[] = {
      {"Mean", s.mean}, {"Median", s.median}, {"P90", s.p90}, {"P99", s.p99}};
  for (const auto& [label, value] : rows) {
    const std::string text = std::string(label) + " " + name + " (ms):";
    std::printf("%-40s %-10.2f\n", text.c_str(), value * 1e3);
  }
}

void add_latency(ordered_json& j, const char* name, const Summary& s) {
  const std::string n = name;
  j["mean_" + n + "_ms"] = s.mean * 1e3;
  j["median_" + n + "_ms"] = s.median * 1e3;
  j["std_" + n + "_ms"] = s.stddev * 1e3;
  j["p50_" + n + "_ms"] = s.median * 1e3;
  j["p90_" + n + "_ms"] = s.p90 * 1e3;
  j["p99_" + n + "_ms"] = s.p99 * 1e3;
}

int run_bench_serve(const BenchServeOptions& o) {
  const ServerUrl url = parse_base_url(o.base_url);
  const std::string path = url.prefix + o.endpoint;
  const bool chat = o.endpoint.find("chat") != std::string::npos;
  const WorkloadOptions& w = o.w;
  validate_workload(w, chat);
  auto probe_client = make_client(url, o);
  const std::string model = o.model.empty() ? first_model_id(*probe_client, url) : o.model;
  const std::vector<std::vector<UserTurn>> conversations = make_conversations(w, chat);
  const int32_t turns = turns_per_conversation(w);
  const int32_t conversation_count = w.num_prompts;
  const int32_t n = conversation_count * turns;  // requests
  const int32_t prompt_len = w.shared_prefix_len + w.input_len;
  if (turns > 1)
    std::fprintf(stderr,
                 "l2kv bench-serve: %s%s, model %s, %d conversations of %d turns, each turn "
                 "the conversation so far and %d new tokens -> %d\n",
                 o.base_url.c_str(), o.endpoint.c_str(), model.c_str(), conversation_count, turns,
                 w.input_len, w.output_len);
  else
    std::fprintf(stderr, "l2kv bench-serve: %s%s, model %s, %d prompts of %d tokens -> %d\n",
                 o.base_url.c_str(), o.endpoint.c_str(), model.c_str(), n, prompt_len,
                 w.output_len);
  if (w.shared_prefix_len > 0)
    std::fprintf(stderr, "l2kv bench-serve: %d shared prefixes of %d tokens, then %d of each\n",
                 w.num_prefixes, w.shared_prefix_len, w.input_len);

  // One request first, so a wrong endpoint or a server that is not OpenAI-compatible fails
  // with its own message instead of a table of failures. Its prompt shares nothing with the
  // measured ones, so a server's prefix cache gains nothing from it.
  {
    WorkloadOptions probe_options = w;
    probe_options.num_prompts = 1;
    probe_options.shared_prefix_len = 0;
    probe_options.multi_turn = 1;
    probe_options.seed = w.seed ^ 0x9e3779b9u;
    const std::string probe_body =
        request_body(probe_options, model, chat, make_conversations(probe_options, chat)[0], {});
    RequestTiming probe;
    send_request(*probe_client, path, probe_body, chat, w.input_len, Clock::now(), probe);
    if (!probe.success)
      throw Error("the first request to " + url.scheme_host_port + path +
                  " failed: " + probe.error);
  }

  // Arrival times of conversations (of requests with one turn each): Poisson (exponential
  // gaps) at --request-rate, or all at once. A conversation's later turns follow its answers.
  std::vector<double> arrival_s(static_cast<size_t>(conversation_count), 0.0);
  if (std::isfinite(o.request_rate)) {
    std::mt19937_64 rng(w.seed + 1);
    std::exponential_distribution<double> gap(o.request_rate);
    for (int32_t i = 1; i < conversation_count; ++i) arrival_s[i] = arrival_s[i - 1] + gap(rng);
  }
  int32_t workers =
      o.max_concurrency > 0 ? std::min(o.max_concurrency, conversation_count) : conversation_count;
  if (workers > kMaxWorkers) {
    std::fprintf(stderr, "l2kv bench-serve: at most %d requests in flight (one thread each)\n",
                 kMaxWorkers);
    workers = kMaxWorkers;
  }

  // Request c * turns + k is turn k + 1 of conversation c.
  std::vector<RequestTiming> timings(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) timings[static_cast<size_t>(i)].turn = i % turns + 1;
  std::atomic<int32_t> next{0}, done{0}, failed{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  std::mutex error_mutex;
  std::string first_error;
  for (int32_t t = 0; t < workers; ++t)
    threads.emplace_back([&] {
      std::unique_ptr<httplib::Client> client;
      try {
        client = make_client(url, o);
      } catch (const std::exception&) {
      }
      for (int32_t c; (c = next.fetch_add(1)) < conversation_count;) {
        const auto& conversation = conversations[static_cast<size_t>(c)];
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(arrival_s[c])));
        std::vector<std::string> answers;
        for (int32_t k = 0; k < turns; ++k) {
          RequestTiming& r = timings[static_cast<size_t>(c * turns + k)];
          if (static_cast<int32_t>(answers.size()) < k) {
            r.error = "turn " + std::to_string(k) + " of its conversation failed";
          } else {
            try {
              if (!client) throw Error("no HTTP client");
              // Every user message and answer so far, as if each answer had output_len tokens.
              const int64_t estimate = static_cast<int64_t>(w.shared_prefix_len) +
                                       static_cast<int64_t>(k + 1) * w.input_len +
                                       static_cast<int64_t>(k) * w.output_len;
              std::string answer;
              send_request(*client, path, request_body(w, model, chat, conversation, answers), chat,
                           estimate, start, r, &answer);
              if (r.success) answers.push_back(std::move(answer));
            } catch (const std::exception& e) {
              r.success = false;
              r.error = e.what();
            }
          }
          if (!r.success) {
            ++failed;
            std::lock_guard<std::mutex> lock(error_mutex);
            if (first_error.empty()) first_error = r.error;
          }
          ++done;
        }
      }
    });
  while (done.load() < n) {
    if (o.progress)
      print_progress(done.load(), failed.load(), n,
                     std::chrono::duration<double>(Clock::now() - start).count());
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (auto& t : threads) t.join();
  const double duration = std::chrono::duration<double>(Clock::now() - start).count();
  if (o.progress) {
    print_progress(n, failed.load(), n, duration);
    std::fprintf(stderr, "\n");
  }
  if (!first_error.empty())
    std::fprintf(stderr, "l2kv bench-serve: %d requests failed; the first: %s\n", failed.load(),
                 first_error.c_str());

  const ServingMetrics m = compute_serving_metrics(timings, duration);
  const std::vector<Summary> turn_ttft = ttft_by_turn(timings);
  print_section(" Serving Benchmark Result ", '=');
  std::printf("%-40s %-10lld\n", "Successful requests:", static_cast<long long>(m.completed));
  std::printf("%-40s %-10lld\n", "Failed requests:", static_cast<long long>(m.failed));
  if (o.max_concurrency > 0)
    std::printf("%-40s %-10d\n", "Maximum request concurrency:", o.max_concurrency);
  if (std::isfinite(o.request_rate))
    std::printf("%-40s %-10.2f\n", "Request rate configured (RPS):", o.request_rate);
  else
    std::printf("%-40s %-10s\n", "Request rate configured (RPS):", "inf");
  std::printf("%-40s %-10.2f\n", "Benchmark duration (s):", m.duration_s);
  std::printf("%-40s %-10lld\n",
              "Total input tokens:", static_cast<long long>(m.total_input_tokens));
  std::printf("%-40s %-10lld\n",
              "Total generated tokens:", static_cast<long long>(m.total_output_tokens));
  std::printf("%-40s %-10.2f\n", "Request throughput (req/s):", m.request_throughput);
  std::printf("%-40s %-10.2f\n", "Output token throughput (tok/s):", m.output_throughput);
  std::printf("%-40s %-10.2f\n", "Total Token throughput (tok/s):", m.total_token_throughput);
  std::printf("%-40s %-10d\n", "Peak concurrent requests:", m.max_concurrency);
  print_latency("Time to First Token", "TTFT", m.ttft);
  if (turns > 1) {
    // Later turns resend the conversation so far: a server's prefix cache shows here.
    print_section("TTFT by Turn", '-');
    for (size_t k = 0; k < turn_ttft.size(); ++k) {
      const std::string label = "Turn " + std::to_string(k + 1) + " mean/median/P99 (ms):";
      std::printf("%-40s %.2f / %.2f / %.2f\n", label.c_str(), turn_ttft[k].mean * 1e3,
                  turn_ttft[k].median * 1e3, turn_ttft[k].p99 * 1e3);
    }
  }
  print_latency("Time per Output Token (excl. 1st token)", "TPOT", m.tpot);
  print_latency("Inter-token Latency", "ITL", m.itl);
  print_latency("End-to-end Latency", "E2EL", m.e2el);
  print_section("", '=');
  std::fflush(stdout);

  if (!o.json_path.empty()) {
    ordered_json j = {{"date", today()},
                      {"command", o.command_line},
                      {"backend", "openai-chat"},
                      {"base_url", o.base_url},
                      {"endpoint", o.endpoint},
                      {"model_id", model},
                      {"num_prompts", n},
                      {"input_len", prompt_len},
                      {"shared_prefix_len", w.shared_prefix_len},
                      {"num_prefixes", w.shared_prefix_len > 0 ? w.num_prefixes : 0},
                      {"multi_turn", turns},
                      {"num_conversations", conversation_count},
                      {"output_len", w.output_len},
                      {"request_rate", std::isfinite(o.request_rate) ? ordered_json(o.request_rate)
                                                                     : ordered_json("inf")},
                      {"max_concurrency", o.max_concurrency > 0 ? ordered_json(o.max_concurrency)
                                                                : ordered_json(nullptr)},
                      {"seed", w.seed},
                      {"duration", m.duration_s},
                      {"completed", m.completed},
                      {"failed", m.failed},
                      {"total_input_tokens", m.total_input_tokens},
                      {"total_output_tokens", m.total_output_tokens},
                      {"request_throughput", m.request_throughput},
                      {"output_throughput", m.output_throughput},
                      {"total_token_throughput", m.total_token_throughput},
                      {"max_concurrency_reached", m.max_concurrency}};
    if (!chat) j["backend"] = "openai";
    add_latency(j, "ttft", m.ttft);
    add_latency(j, "tpot", m.tpot);
    add_latency(j, "itl", m.itl);
    add_latency(j, "e2el", m.e2el);
    ordered_json by_turn = ordered_json::array();
    for (size_t k = 0; k < turn_ttft.size(); ++k) {
      ordered_json entry = {{"turn", k + 1}, {"completed", turn_ttft[k].count}};
      add_latency(entry, "ttft", turn_ttft[k]);
      by_turn.push_back(std::move(entry));
    }
    j["ttft_by_turn"] = std::move(by_turn);
    ordered_json input_lens = ordered_json::array(), output_lens = ordered_json::array(),
                 ttfts = ordered_json::array(), itls = ordered_json::array(),
                 errors = ordered_json::array(), turn_of = ordered_json::array();
    for (const RequestTiming& t : timings) {
      turn_of.push_back(t.turn);
      input_lens.push_back(t.prompt_tokens);
      output_lens.push_back(t.success ? t.output_tokens : 0);
      ttfts.push_back(t.success ? ttft_s(t) : 0.0);
      itls.push_back(t.success ? inter_chunk_gaps(t) : std::vector<double>{});
      errors.push_back(t.error);
    }
    j["input_lens"] = std::move(input_lens);
    j["output_lens"] = std::move(output_lens);
    j["ttfts"] = std::move(ttfts);
    j["itls"] = std::move(itls);
    j["errors"] = std::move(errors);
    j["turns"] = std::move(turn_of);
    std::ofstream out(o.json_path);
    if (!out) throw Error("cannot write " + o.json_path);
    out << j.dump(1) << "\n";
  }
  return m.completed > 0 ? 0 : 1;
}

}  // namespace

std::function<int()> add_bench_serve_command(CLI::App& app) {
  auto o = std::make_shared<BenchServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench-serve",
      "Load-test an OpenAI-compatible server (vLLM, SGLang, l2kv serve) with random prompts, "
      "streamed; report request and token throughput and TTFT, TPOT, ITL and end-to-end "
      "latency percentiles as `vllm bench serve` does");
  cmd->add_option("--base-url", o->base_url, "Server URL (scheme, host, port, optional prefix)")
      ->capture_default_str();
  cmd->add_option("--endpoint", o->endpoint, "API path: /v1/completions or /v1/chat/completions")
      ->capture_default_str();
  cmd->add_option("--model", o->model,
                  "Model name sent in requests (default: the first id of GET /v1/models)");
  cmd->add_option("--num-prompts", o->w.num_prompts,
                  "Requests to send (conversations with --multi-turn)")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--input-len", o->w.input_len,
                  "Prompt length: random token ids (completions) or random words (chat); with "
                  "--multi-turn, the length of each turn's new user message")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--shared-prefix-len", o->w.shared_prefix_len,
                  "Tokens (or words) of a prefix shared by requests, before their --input-len "
                  "own ones (a system prompt); 0 = none")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--num-prefixes", o->w.num_prefixes,
                  "Distinct shared prefixes; request i gets prefix i mod this")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--output-len", o->w.output_len, "max_tokens of every request")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--multi-turn", o->w.multi_turn,
                  "Turns per conversation (0 or 1 = off): --num-prompts conversations, each "
                  "sending its turns one after another, the next once the answer has ended; turn "
                  "k sends turns 1..k-1 with the server's answers (chat: as user and assistant "
                  "messages; completions, which need --random-text: as one text) and a new "
                  "--input-len user message, so later turns can hit a prefix cache (the summary "
                  "gives TTFT per turn). Conversations arrive at --request-rate and run at most "
                  "--max-concurrency at once; turn k's prompt grows to about k * (input-len + "
                  "output-len) tokens, which must fit the server's context")
      ->check(CLI::Range(0, 1 << 16))
      ->capture_default_str();
  cmd->add_option(
         "--request-rate", o->request_rate,
         "Requests (conversations with --multi-turn) per second with Poisson arrivals; inf "
         "sends all at once")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-concurrency", o->max_concurrency,
                  "At most this many requests (conversations with --multi-turn) in flight (0 = no "
                  "cap)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--seed", o->w.seed, "Seed of the prompts and arrival times")
      ->check(whole_number(0, std::numeric_limits<uint32_t>::max()))
      ->capture_default_str();
  cmd->add_option("--vocab-size", o->w.vocab_size,
                  "Random prompt token ids are drawn from [100, vocab-size)")
      ->check(CLI::Range(2, 1 << 24))
      ->capture_default_str();
  cmd->add_flag("--random-text", o->w.random_text,
                "Send random words as the completions prompt instead of token ids");
  add_on_off_flag(*cmd, "ignore-eos", o->w.ignore_eos,
                  "Send ignore_eos so every request generates --output-len tokens (default on)");
  cmd->add_option("--extra-body", o->w.extra_body,
                  "A JSON object merged into every request body, its fields replacing the "
                  "workload's (e.g. '{\"response_format\": {\"type\": \"json_object\"}}' "
                  "with --no-ignore-eos to measure constrained decoding)");
  cmd->add_option("--api-key", o->api_key, "Bearer token sent as Authorization");
  cmd->add_option("--json", o->json_path, "Write the result (and per-request data) as JSON here");
  cmd->add_option("--timeout", o->timeout_s,
                  "Seconds a request may wait for the server's next bytes")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("!--no-progress", o->progress, "No progress bar on stderr");
  return [o, cmd] {
    // A secret does not belong in results.
    o->command_line = command_line("l2kv bench-serve", *cmd, {"--api-key"});
    if (o->endpoint.empty() || o->endpoint.front() != '/') o->endpoint = "/" + o->endpoint;
    return run_bench_serve(*o);
  };
}

}  // namespace l2kv::cli
