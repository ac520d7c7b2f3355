// /metrics text: gauges, counters by reason, cumulative histogram buckets.
#include "l2kv/server/metrics.h"

#include <gtest/gtest.h>

#include <string>

namespace l2kv::server {
namespace {

bool has_line(const std::string& text, const std::string& line) {
  return text.find(line + "\n") != std::string::npos;
}

TEST(ServerMetrics, HistogramIsCumulative) {
  Histogram h({0.1, 1.0});
  h.observe(0.05);
  h.observe(0.5, 2);
  h.observe(5.0);
  std::string out;
  h.render("x", "m=\"a\"", out);
  EXPECT_TRUE(has_line(out, "x_bucket{m=\"a\",le=\"0.1\"} 1")) << out;
  EXPECT_TRUE(has_line(out, "x_bucket{m=\"a\",le=\"1\"} 3")) << out;
  EXPECT_TRUE(has_line(out, "x_bucket{m=\"a\",le=\"+Inf\"} 4")) << out;
  EXPECT_TRUE(has_line(out, "x_count{m=\"a\"} 4")) << out;
  EXPECT_TRUE(has_line(out, "x_sum{m=\"a\"} 6.05")) << out;
}

TEST(ServerMetrics, RendersEveryFamily) {
  Metrics m("tiny");
  m.add_prompt_tokens(10);
  m.add_generation_tokens(7);
  m.observe_time_to_first_token(0.02);
  m.observe_inter_token_latency(0.01, 6);
  m.observe_request_finished("length", 1.0);
  m.observe_request_finished("abort", 0.1);
  const std::string out = m.render({2, 3, 100, 60, 500, 320, 4});
  EXPECT_TRUE(has_line(out, "l2kv:num_requests_running{model_name=\"tiny\"} 2")) << out;
  EXPECT_TRUE(has_line(out, "l2kv:num_requests_waiting{model_name=\"tiny\"} 3"));
  EXPECT_TRUE(has_line(out, "l2kv:kv_blocks_used{model_name=\"tiny\"} 40"));
  EXPECT_TRUE(has_line(out, "l2kv:kv_blocks_free{model_name=\"tiny\"} 60"));
  EXPECT_TRUE(has_line(out, "l2kv:prompt_tokens_total{model_name=\"tiny\"} 10"));
  EXPECT_TRUE(has_line(out, "l2kv:generation_tokens_total{model_name=\"tiny\"} 7"));
  EXPECT_TRUE(has_line(out, "l2kv:prefix_cache_queries_total{model_name=\"tiny\"} 500")) << out;
  EXPECT_TRUE(has_line(out, "l2kv:prefix_cache_hits_total{model_name=\"tiny\"} 320")) << out;
  EXPECT_TRUE(has_line(out, "# TYPE l2kv:prefix_cache_hits_total counter"));
  EXPECT_TRUE(has_line(out, "l2kv:num_preemptions_total{model_name=\"tiny\"} 4")) << out;
  EXPECT_TRUE(has_line(
      out, "l2kv:request_success_total{model_name=\"tiny\",finished_reason=\"length\"} 1"));
  EXPECT_TRUE(
      has_line(out, "l2kv:request_success_total{model_name=\"tiny\",finished_reason=\"stop\"} 0"));
  EXPECT_TRUE(has_line(out, "l2kv:time_to_first_token_seconds_count{model_name=\"tiny\"} 1"));
  EXPECT_TRUE(has_line(out, "l2kv:inter_token_latency_seconds_count{model_name=\"tiny\"} 6"));
  EXPECT_TRUE(has_line(out, "l2kv:e2e_request_latency_seconds_count{model_name=\"tiny\"} 2"));
  EXPECT_TRUE(has_line(out, "# TYPE l2kv:time_to_first_token_seconds histogram"));
  EXPECT_TRUE(has_line(out, "# TYPE l2kv:kv_blocks_used gauge"));
  EXPECT_TRUE(has_line(out, "# TYPE l2kv:generation_tokens_total counter"));
}

}  // namespace
}  // namespace l2kv::server
