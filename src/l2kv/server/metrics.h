// Prometheus text exposition for /metrics, with vLLM's metric names under an `l2kv:` prefix:
// load gauges, token and request counters, and latency histograms (TTFT, inter-token, e2e).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace l2kv::server {

// A cumulative histogram with fixed upper bounds (seconds), as Prometheus expects.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value, int64_t count = 1);
  // Appends the _bucket, _sum and _count lines of `name` with `labels` ("k=\"v\"").
  void render(const std::string& name, const std::string& labels, std::string& out) const;

 private:
  std::vector<double> bounds_;
  std::vector<int64_t> counts_;  // per bucket, not cumulative; the last is +Inf
  double sum_ = 0;
  int64_t count_ = 0;
};

// Gauges read at scrape time, and the engine's own counters.
struct LoadGauges {
  int64_t running = 0, waiting = 0;
  int64_t kv_blocks_total = 0, kv_blocks_free = 0;
  // Prefix caching, in tokens since start (EngineStats): rendered as vLLM's counters.
  int64_t prefix_cache_queries = 0, prefix_cache_hits = 0;
  int64_t preemptions = 0;  // requests preempted (their KV freed, recomputed later)
};

// Thread-safe: the engine loop's output thread observes, HTTP threads render.
class Metrics {
 public:
  explicit Metrics(std::string model_name);

  void add_prompt_tokens(int64_t n);
  void add_generation_tokens(int64_t n);
  void observe_time_to_first_token(double seconds);
  void observe_inter_token_latency(double seconds, int64_t tokens);
  void observe_request_finished(const std::string& reason, double e2e_seconds);

  std::string render(const LoadGauges& load) const;

 private:
  mutable std::mutex mutex_;
  std::string labels_;
  int64_t prompt_tokens_ = 0, generation_tokens_ = 0;
  std::map<std::string, int64_t> finished_;  // by finish reason
  Histogram ttft_, itl_, e2e_;
};

}  // namespace l2kv::server
