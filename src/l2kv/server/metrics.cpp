#include "l2kv/server/metrics.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace l2kv::server {
namespace {

// The shortest decimal that reads back as `v` (0.1, not 0.10000000000000001).
std::string format_number(double v) {
  char buffer[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buffer, sizeof buffer, "%.0f", v);
    return buffer;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, v);
    if (std::strtod(buffer, nullptr) == v) break;
  }
  return buffer;
}

void header(std::string& out, const std::string& name, const char* type, const char* help) {
  out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

void sample(std::string& out, const std::string& name, const std::string& labels, double value) {
  out += name + "{" + labels + "} " + format_number(value) + "\n";
}

// Escapes a label value: backslash, quote and newline.
std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// vLLM's buckets: TTFT from 1 ms to 160 s, inter-token 10 ms to 80 s, e2e 0.3 s to 7680 s.
const std::vector<double> kTtftBounds = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                         0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                         7.5,   10.0,  20.0, 40.0, 80.0, 160.0};
const std::vector<double> kItlBounds = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                                        0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
const std::vector<double> kE2eBounds = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                        5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                        60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value, int64_t count) {
  const size_t bucket = static_cast<size_t>(
      std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  counts_[bucket] += count;
  sum_ += value * static_cast<double>(count);
  count_ += count;
}

void Histogram::render(const std::string& name, const std::string& labels, std::string& out) const {
  int64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i];
    const std::string le = i < bounds_.size() ? format_number(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + labels + ",le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
  }
  sample(out, name + "_sum", labels, sum_);
  sample(out, name + "_count", labels, static_cast<double>(count_));
}

Metrics::Metrics(std::string model_name)
    : labels_("model_name=\"" + escape(model_name) + "\""),
      ttft_(kTtftBounds),
      itl_(kItlBounds),
      e2e_(kE2eBounds) {
  for (const char* reason : {"stop", "length", "abort", "error"}) finished_[reason] = 0;
}

void Metrics::add_prompt_tokens(int64_t n) {
  std::lock_guard lock(mutex_);
  prompt_tokens_ += n;
}

void Metrics::add_generation_tokens(int64_t n) {
  std::lock_guard lock(mutex_);
  generation_tokens_ += n;
}

void Metrics::observe_time_to_first_token(double seconds) {
  std::lock_guard lock(mutex_);
  ttft_.observe(seconds);
}

void Metrics::observe_inter_token_latency(double seconds, int64_t tokens) {
  std::lock_guard lock(mutex_);
  itl_.observe(seconds, tokens);
}

void Metrics::observe_request_finished(const std::string& reason, double e2e_seconds) {
  std::lock_guard lock(mutex_);
  ++finished_[reason];
  e2e_.observe(e2e_seconds);
}

std::string Metrics::render(const LoadGauges& load) const {
  std::lock_guard lock(mutex_);
  std::string out;
  header(out, "l2kv:num_requests_running", "gauge", "Requests in the running batch.");
  sample(out, "l2kv:num_requests_running", labels_, static_cast<double>(load.running));
  header(out, "l2kv:num_requests_waiting", "gauge", "Requests waiting to be scheduled.");
  sample(out, "l2kv:num_requests_waiting", labels_, static_cast<double>(load.waiting));
  const int64_t used = load.kv_blocks_total - load.kv_blocks_free;
  header(out, "l2kv:kv_blocks_used", "gauge", "KV-cache blocks held by requests.");
  sample(out, "l2kv:kv_blocks_used", labels_, static_cast<double>(used));
  header(out, "l2kv:kv_blocks_free", "gauge", "KV-cache blocks free.");
  sample(out, "l2kv:kv_blocks_free", labels_, static_cast<double>(load.kv_blocks_free));
  header(out, "l2kv:kv_cache_usage_perc", "gauge", "Fraction of KV-cache blocks in use (0-1).");
  sample(out, "l2kv:kv_cache_usage_perc", labels_,
         load.kv_blocks_total ? static_cast<double>(used) / load.kv_blocks_total : 0.0);
  header(out, "l2kv:prompt_tokens_total", "counter", "Prompt tokens of requests served.");
  sample(out, "l2kv:prompt_tokens_total", labels_, static_cast<double>(prompt_tokens_));
  header(out, "l2kv:generation_tokens_total", "counter", "Tokens generated.");
  sample(out, "l2kv:generation_tokens_total", labels_, static_cast<double>(generation_tokens_));
  header(out, "l2kv:prefix_cache_queries_total", "counter",
         "Prefix cache queries, in tokens: prompt tokens of the requests admitted.");
  sample(out, "l2kv:prefix_cache_queries_total", labels_,
         static_cast<double>(load.prefix_cache_queries));
  header(out, "l2kv:prefix_cache_hits_total", "counter",
         "Prefix cache hits, in tokens: of the queried ones, those found cached.");
  sample(out, "l2kv:prefix_cache_hits_total", labels_, static_cast<double>(load.prefix_cache_hits));
  header(out, "l2kv:num_preemptions_total", "counter",
         "Requests preempted: their KV blocks freed, to be recomputed.");
  sample(out, "l2kv:num_preemptions_total", labels_, static_cast<double>(load.preemptions));
  header(out, "l2kv:request_success_total", "counter", "Requests finished, by finish reason.");
  for (const auto& [reason, n] : finished_)
    sample(out, "l2kv:request_success_total", labels_ + ",finished_reason=\"" + reason + "\"",
           static_cast<double>(n));
  header(out, "l2kv:time_to_first_token_seconds", "histogram",
         "Time from arrival to the first generated token.");
  ttft_.render("l2kv:time_to_first_token_seconds", labels_, out);
  header(out, "l2kv:inter_token_latency_seconds", "histogram",
         "Time between generated tokens of a request.");
  itl_.render("l2kv:inter_token_latency_seconds", labels_, out);
  header(out, "l2kv:e2e_request_latency_seconds", "histogram",
         "Time from arrival to the end of a request.");
  e2e_.render("l2kv:e2e_request_latency_seconds", labels_, out);
  return out;
}

}  // namespace l2kv::server
