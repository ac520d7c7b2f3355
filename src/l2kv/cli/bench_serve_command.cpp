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
  int32_t num_prompts = 100;
  int32_t input_len = 512;
  // Shared-prefix workload: request i's prompt is prefix i % num_prefixes (shared_prefix_len
  // random tokens or words) followed by input_len of its own.
  int32_t shared_prefix_len = 0;
  int32_t num_prefixes = 1;
  int32_t output_len = 128;
  double request_rate = std::numeric_limits<double>::infinity();
  int32_t max_concurrency = 0;  // 0 = no cap
  uint32_t seed = 0;
  int32_t vocab_size = 32000;
  bool random_text = false;
  bool ignore_eos = true;
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
std::string first_model_id(httplib::Client& client, const ServerUrl& url,
                           const std::string& base_url) {
  const std::string path = url.prefix + "/v1/models";
  const httplib::Result res = client.Get(path);
  if (!res)
    throw Error("cannot reach " + base_url + path + ": " + httplib::to_string(res.error()) +
                " (is the server up?)");
  if (res->status != 200)
    throw Error("GET " + base_url + path + " answered HTTP " + std::to_string(res->status) + ": " +
                quote(res->body));
  const auto body = nlohmann::json::parse(res->body, nullptr, false);
  if (body.is_discarded() || !body.contains("data") || !body["data"].is_array() ||
      body["data"].empty() || !body["data"][0].contains("id") || !body["data"][0]["id"].is_string())
    throw Error("GET " + base_url + path + " is not an OpenAI model list: " + quote(res->body));
  return body["data"][0]["id"].get<std::string>();
}

// Words of one token each in most vocabularies: a chat prompt of input_len words.
constexpr const char* kWords[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "that",  "for",   "it",    "as",
    "was",   "with",  "be",    "by",    "on",    "not",   "he",    "this",  "are",   "or",
    "his",   "from",  "at",    "which", "but",   "have",  "an",    "had",   "they",  "you",
    "were",  "their", "one",   "all",   "we",    "can",   "her",   "has",   "there", "been",
    "if",    "more",  "when",  "will",  "would", "who",   "so",    "no",    "time",  "water",
    "house", "light", "river", "stone", "green", "small", "world", "music", "night", "paper"};

// The request bodies, made up front from the seed so every run sends the same prompts.
std::vector<std::string> make_bodies(const BenchServeOptions& o, const std::string& model,
                                     bool chat) {
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int32_t> token(std::min(100, o.vocab_size - 1), o.vocab_size - 1);
  std::uniform_int_distribution<size_t> word(0, std::size(kWords) - 1);
  const bool text_prompt = chat || o.random_text;
  auto random_text = [&](int32_t words) {
    std::string text;
    for (int32_t w = 0; w < words; ++w) {
      if (w) text += ' ';
      text += kWords[word(rng)];
    }
    return text;
  };
  auto random_ids = [&](int32_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (auto& id : ids) id = token(rng);
    return ids;
  };
  std::vector<std::string> prefix_texts;
  std::vector<std::vector<int32_t>> prefix_ids;
  if (o.shared_prefix_len > 0)
    for (int32_t k = 0; k < o.num_prefixes; ++k) {
      if (text_prompt) {
        prefix_texts.push_back(random_text(o.shared_prefix_len) + " ");
      } else {
        prefix_ids.push_back(random_ids(o.shared_prefix_len));
      }
    }
  std::vector<std::string> bodies;
  for (int32_t i = 0; i < o.num_prompts; ++i) {
    ordered_json body = {{"model", model}};
    const auto k = static_cast<size_t>(i % o.num_prefixes);
    if (text_prompt) {
      std::string text = random_text(o.input_len);
      if (o.shared_prefix_len > 0) text = prefix_texts[k] + text;
      if (chat)
        body["messages"] = ordered_json::array({{{"role", "user"}, {"content", text}}});
      else
        body["prompt"] = text;
    } else {
      std::vector<int32_t> ids = random_ids(o.input_len);
      if (o.shared_prefix_len > 0)
        ids.insert(ids.begin(), prefix_ids[k].begin(), prefix_ids[k].end());
      body["prompt"] = ids;
    }
    body["max_tokens"] = o.output_len;
    if (chat) body["max_completion_tokens"] = o.output_len;
    if (o.ignore_eos) body["ignore_eos"] = true;
    body["temperature"] = 0.0;
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    bodies.push_back(body.dump());
  }
  return bodies;
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

  // Whether a choice carries output text (a chat delta's content or reasoning, or a
  // completion's text); role-only and finish-only chunks carry none.
  bool text_of(const nlohmann::json& choice) const {
    auto non_empty = [](const nlohmann::json& obj, const char* key) {
      return obj.is_object() && obj.contains(key) && obj[key].is_string() &&
             !obj[key].get_ref<const std::string&>().empty();
    };
    if (chat_)
      return choice.contains("delta") && (non_empty(choice["delta"], "content") ||
                                          non_empty(choice["delta"], "reasoning_content"));
    return non_empty(choice, "text");
  }

  bool chat_;
  std::string pending_, raw_;
  bool done_ = false, saw_usage_ = false;
  int64_t chunks_ = 0;
};

// Sends one streaming request and fills `t` (times from `start`).
void send_request(httplib::Client& client, const std::string& path, const std::string& body,
                  bool chat, int32_t input_len, Clock::time_point start, RequestTiming& t) {
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
  t.prompt_tokens = t.prompt_tokens ? t.prompt_tokens : input_len;
  if (!reader.saw_usage()) t.output_tokens = reader.chunks();
  if (!t.error.empty()) return;  // a bad chunk: the reader said why
  if (!sent) {
    t.error = "request failed: " + httplib::to_string(err);
    return;
  }
  if (status != 200) {
    t.error = "HTTP " + std::to_string(status) + ": " + quote(error_body);
    return;
  }
  if (!reader.done() && reader.chunks() == 0) {
    t.error = "no server-sent events ending in [DONE] in the response: " + quote(reader.raw());
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
  auto probe_client = make_client(url, o);
  const std::string model =
      o.model.empty() ? first_model_id(*probe_client, url, o.base_url) : o.model;
  const std::vector<std::string> bodies = make_bodies(o, model, chat);
  const int32_t n = o.num_prompts;
  const int32_t prompt_len = o.shared_prefix_len + o.input_len;
  std::fprintf(stderr, "l2kv bench-serve: %s%s, model %s, %d prompts of %d tokens -> %d\n",
               o.base_url.c_str(), o.endpoint.c_str(), model.c_str(), n, prompt_len, o.output_len);
  if (o.shared_prefix_len > 0)
    std::fprintf(stderr, "l2kv bench-serve: %d shared prefixes of %d tokens, then %d of each\n",
                 o.num_prefixes, o.shared_prefix_len, o.input_len);

  // One request first, so a wrong endpoint or a server that is not OpenAI-compatible fails
  // with its own message instead of a table of failures. Its prompt shares nothing with the
  // measured ones, so a server's prefix cache gains nothing from it.
  {
    BenchServeOptions probe_options = o;
    probe_options.num_prompts = 1;
    probe_options.shared_prefix_len = 0;
    probe_options.seed = o.seed ^ 0x9e3779b9u;
    const std::string probe_body = make_bodies(probe_options, model, chat).front();
    RequestTiming probe;
    send_request(*probe_client, path, probe_body, chat, o.input_len, Clock::now(), probe);
    if (!probe.success)
      throw Error("the first request to " + url.scheme_host_port + path +
                  " failed: " + probe.error);
  }

  // Arrival times: Poisson (exponential gaps) at --request-rate, or all at once.
  std::vector<double> arrival_s(static_cast<size_t>(n), 0.0);
  if (std::isfinite(o.request_rate)) {
    std::mt19937_64 rng(o.seed + 1);
    std::exponential_distribution<double> gap(o.request_rate);
    for (int32_t i = 1; i < n; ++i) arrival_s[i] = arrival_s[i - 1] + gap(rng);
  }
  int32_t workers = o.max_concurrency > 0 ? std::min(o.max_concurrency, n) : n;
  if (workers > kMaxWorkers) {
    std::fprintf(stderr, "l2kv bench-serve: at most %d requests in flight (one thread each)\n",
                 kMaxWorkers);
    workers = kMaxWorkers;
  }

  std::vector<RequestTiming> timings(static_cast<size_t>(n));
  std::atomic<int32_t> next{0}, done{0}, failed{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  std::mutex error_mutex;
  std::string first_error;
  for (int32_t w = 0; w < workers; ++w)
    threads.emplace_back([&] {
      std::unique_ptr<httplib::Client> client;
      try {
        client = make_client(url, o);
      } catch (const std::exception&) {
      }
      for (int32_t i; (i = next.fetch_add(1)) < n;) {
        RequestTiming& t = timings[static_cast<size_t>(i)];
        std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                  std::chrono::duration<double>(arrival_s[i])));
        try {
          if (!client) throw Error("no HTTP client");
          send_request(*client, path, bodies[static_cast<size_t>(i)], chat, prompt_len, start, t);
        } catch (const std::exception& e) {
          t.success = false;
          t.error = e.what();
        }
        if (!t.success) {
          ++failed;
          std::lock_guard<std::mutex> lock(error_mutex);
          if (first_error.empty()) first_error = t.error;
        }
        ++done;
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
                      {"shared_prefix_len", o.shared_prefix_len},
                      {"num_prefixes", o.shared_prefix_len > 0 ? o.num_prefixes : 0},
                      {"output_len", o.output_len},
                      {"request_rate", std::isfinite(o.request_rate) ? ordered_json(o.request_rate)
                                                                     : ordered_json("inf")},
                      {"max_concurrency", o.max_concurrency > 0 ? ordered_json(o.max_concurrency)
                                                                : ordered_json(nullptr)},
                      {"seed", o.seed},
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
    ordered_json input_lens = ordered_json::array(), output_lens = ordered_json::array(),
                 ttfts = ordered_json::array(), itls = ordered_json::array(),
                 errors = ordered_json::array();
    for (const RequestTiming& t : timings) {
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
  cmd->add_option("--num-prompts", o->num_prompts, "Requests to send")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--input-len", o->input_len,
                  "Prompt length: random token ids (completions) or random words (chat)")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--shared-prefix-len", o->shared_prefix_len,
                  "Tokens (or words) of a prefix shared by requests, before their --input-len "
                  "own ones (a system prompt); 0 = none")
      ->check(CLI::Range(0, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--num-prefixes", o->num_prefixes,
                  "Distinct shared prefixes; request i gets prefix i mod this")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--output-len", o->output_len, "max_tokens of every request")
      ->check(CLI::Range(1, 1 << 24))
      ->capture_default_str();
  cmd->add_option("--request-rate", o->request_rate,
                  "Requests per second with Poisson arrivals; inf sends all at once")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--max-concurrency", o->max_concurrency,
                  "At most this many requests in flight (0 = no cap)")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the prompts and arrival times")
      ->capture_default_str();
  cmd->add_option("--vocab-size", o->vocab_size,
                  "Random prompt token ids are drawn from [100, vocab-size)")
      ->check(CLI::Range(2, 1 << 24))
      ->capture_default_str();
  cmd->add_flag("--random-text", o->random_text,
                "Send random words as the completions prompt instead of token ids");
  cmd->add_flag("--ignore-eos,!--no-ignore-eos", o->ignore_eos,
                "Send ignore_eos so every request generates --output-len tokens (default on)");
  cmd->add_option("--api-key", o->api_key, "Bearer token sent as Authorization");
  cmd->add_option("--json", o->json_path, "Write the result (and per-request data) as JSON here");
  cmd->add_option("--timeout", o->timeout_s,
                  "Seconds a request may wait for the server's next bytes")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_flag("!--no-progress", o->progress, "No progress bar on stderr");
  return [o, cmd] {
    o->command_line = "l2kv bench-serve";
    for (const CLI::Option* opt : cmd->get_options()) {
      if (opt->count() == 0 || opt->get_name().empty() || opt->get_name() == "--help") continue;
      if (opt->get_name() == "--api-key") continue;  // a secret does not belong in results
      o->command_line += " " + opt->get_name();
      for (const std::string& value : opt->results()) o->command_line += " " + value;
    }
    if (o->endpoint.empty() || o->endpoint.front() != '/') o->endpoint = "/" + o->endpoint;
    return run_bench_serve(*o);
  };
}

}  // namespace l2kv::cli
