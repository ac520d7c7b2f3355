#include "l2kv/cli/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace l2kv::cli {

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(values.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (rank - static_cast<double>(lo)) * (values[hi] - values[lo]);
}

Summary summarize(std::vector<double> values) {
  Summary s;
  s.count = values.size();
  if (values.empty()) return s;
  double sum = 0;
  for (double v : values) sum += v;
  s.mean = sum / static_cast<double>(values.size());
  double sq = 0;
  for (double v : values) sq += (v - s.mean) * (v - s.mean);
  s.stddev = std::sqrt(sq / static_cast<double>(values.size()));
  s.median = percentile(values, 50);
  s.p90 = percentile(values, 90);
  s.p99 = percentile(std::move(values), 99);
  return s;
}

double ttft_s(const RequestTiming& r) {
  return (r.chunk_s.empty() ? r.end_s : r.chunk_s.front()) - r.send_s;
}

double e2e_s(const RequestTiming& r) {
  return r.end_s - r.send_s;
}

bool tpot_s(const RequestTiming& r, double* out) {
  if (r.output_tokens < 2) return false;
  *out = (e2e_s(r) - ttft_s(r)) / static_cast<double>(r.output_tokens - 1);
  return true;
}

std::vector<double> inter_chunk_gaps(const RequestTiming& r) {
  std::vector<double> gaps;
  for (size_t i = 1; i < r.chunk_s.size(); ++i) gaps.push_back(r.chunk_s[i] - r.chunk_s[i - 1]);
  return gaps;
}

int32_t peak_concurrency(std::span<const RequestTiming> requests) {
  // +1 at each send, -1 at each end; an end sorts before a send at the same instant.
  std::vector<std::pair<double, int>> events;
  for (const RequestTiming& r : requests) {
    events.emplace_back(r.send_s, 1);
    events.emplace_back(r.end_s, -1);
  }
  std::sort(events.begin(), events.end());
  int32_t now = 0, peak = 0;
  for (const auto& e : events) peak = std::max(peak, now += e.second);
  return peak;
}

ServingMetrics compute_serving_metrics(std::span<const RequestTiming> requests, double duration_s) {
  ServingMetrics m;
  m.duration_s = duration_s;
  std::vector<double> ttft, tpot, itl, e2el;
  for (const RequestTiming& r : requests) {
    if (!r.success) {
      ++m.failed;
      continue;
    }
    ++m.completed;
    m.total_input_tokens += r.prompt_tokens;
    m.total_output_tokens += r.output_tokens;
    ttft.push_back(ttft_s(r));
    e2el.push_back(e2e_s(r));
    double t = 0;
    if (tpot_s(r, &t)) tpot.push_back(t);
    const std::vector<double> gaps = inter_chunk_gaps(r);
    itl.insert(itl.end(), gaps.begin(), gaps.end());
  }
  if (duration_s > 0) {
    m.request_throughput = static_cast<double>(m.completed) / duration_s;
    m.output_throughput = static_cast<double>(m.total_output_tokens) / duration_s;
    m.total_token_throughput =
        static_cast<double>(m.total_input_tokens + m.total_output_tokens) / duration_s;
  }
  m.ttft = summarize(std::move(ttft));
  m.tpot = summarize(std::move(tpot));
  m.itl = summarize(std::move(itl));
  m.e2el = summarize(std::move(e2el));
  m.max_concurrency = peak_concurrency(requests);
  return m;
}

std::vector<Summary> ttft_by_turn(std::span<const RequestTiming> requests) {
  std::vector<std::vector<double>> ttft;
  for (const RequestTiming& r : requests) {
    const auto k = static_cast<size_t>(std::max(r.turn, 1) - 1);
    if (ttft.size() <= k) ttft.resize(k + 1);
    if (r.success) ttft[k].push_back(ttft_s(r));
  }
  std::vector<Summary> out;
  for (auto& values : ttft) out.push_back(summarize(std::move(values)));
  return out;
}

}  // namespace l2kv::cli
