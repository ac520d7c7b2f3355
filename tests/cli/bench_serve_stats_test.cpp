// The arithmetic of `l2kv bench-serve`: numpy-style percentiles and vLLM's metric definitions.
#include <gtest/gtest.h>

#include <vector>

#include "l2kv/cli/latency_stats.h"

namespace l2kv::cli {
namespace {

TEST(BenchServeStats, PercentileInterpolatesLinearlyLikeNumpy) {
  // numpy.percentile([1, 2, 3, 4], [0, 25, 50, 90, 99, 100]) = 1, 1.75, 2.5, 3.7, 3.97, 4
  const std::vector<double> v = {4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1.0);
  EXPECT_DOUBLE_EQ(percentile(v, 25), 1.75);
  EXPECT_DOUBLE_EQ(percentile(v, 50), 2.5);
  EXPECT_NEAR(percentile(v, 90), 3.7, 1e-12);
  EXPECT_NEAR(percentile(v, 99), 3.97, 1e-12);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 4.0);
  EXPECT_DOUBLE_EQ(percentile({7}, 99), 7.0);
  EXPECT_DOUBLE_EQ(percentile({}, 50), 0.0);
}

TEST(BenchServeStats, SummaryOfValuesAndOfNothing) {
  const Summary s = summarize({1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  EXPECT_EQ(s.count, 10u);
  EXPECT_DOUBLE_EQ(s.mean, 5.5);
  EXPECT_DOUBLE_EQ(s.median, 5.5);
  EXPECT_NEAR(s.p90, 9.1, 1e-12);
  EXPECT_NEAR(s.p99, 9.91, 1e-12);
  EXPECT_NEAR(s.stddev, 2.8722813232690143, 1e-12);  // numpy.std, ddof=0
  const Summary e = summarize({});
  EXPECT_EQ(e.count, 0u);
  EXPECT_EQ(e.mean, 0.0);
  EXPECT_EQ(e.stddev, 0.0);
  EXPECT_EQ(e.p99, 0.0);
}

RequestTiming request(double send, std::vector<double> chunks, double end, int64_t tokens) {
  RequestTiming r;
  r.success = true;
  r.send_s = send;
  r.chunk_s = std::move(chunks);
  r.end_s = end;
  r.prompt_tokens = 10;
  r.output_tokens = tokens;
  return r;
}

TEST(BenchServeStats, TtftTpotAndItlFollowVllmDefinitions) {
  // Sent at 1.0, chunks at 1.5, 1.6, 1.8, ended at 2.0 with 5 tokens (one chunk held two).
  const RequestTiming r = request(1.0, {1.5, 1.6, 1.8}, 2.0, 5);
  EXPECT_DOUBLE_EQ(ttft_s(r), 0.5);
  EXPECT_DOUBLE_EQ(e2e_s(r), 1.0);
  double tpot = 0;
  ASSERT_TRUE(tpot_s(r, &tpot));
  EXPECT_DOUBLE_EQ(tpot, (1.0 - 0.5) / 4);  // per token after the first, not per chunk
  const std::vector<double> gaps = inter_chunk_gaps(r);
  ASSERT_EQ(gaps.size(), 2u);
  EXPECT_NEAR(gaps[0], 0.1, 1e-12);
  EXPECT_NEAR(gaps[1], 0.2, 1e-12);
  // One token: no TPOT, no gap; no chunk at all: TTFT is the whole latency.
  EXPECT_FALSE(tpot_s(request(0, {0.3}, 0.4, 1), &tpot));
  EXPECT_TRUE(inter_chunk_gaps(request(0, {0.3}, 0.4, 1)).empty());
  EXPECT_DOUBLE_EQ(ttft_s(request(0.5, {}, 0.9, 0)), 0.4);
}

TEST(BenchServeStats, ServingMetricsCountOnlySuccessfulRequests) {
  std::vector<RequestTiming> rs = {request(0, {0.1, 0.2, 0.3}, 0.3, 3),
                                   request(0.1, {0.4, 0.6}, 0.7, 2)};
  RequestTiming failed;
  failed.send_s = 0.2;
  failed.end_s = 0.25;
  failed.error = "HTTP 500";
  rs.push_back(failed);
  const ServingMetrics m = compute_serving_metrics(rs, 2.0);
  EXPECT_EQ(m.completed, 2);
  EXPECT_EQ(m.failed, 1);
  EXPECT_EQ(m.total_input_tokens, 20);
  EXPECT_EQ(m.total_output_tokens, 5);
  EXPECT_DOUBLE_EQ(m.request_throughput, 1.0);
  EXPECT_DOUBLE_EQ(m.output_throughput, 2.5);
  EXPECT_DOUBLE_EQ(m.total_token_throughput, 12.5);
  EXPECT_EQ(m.ttft.count, 2u);
  EXPECT_NEAR(m.ttft.mean, (0.1 + 0.3) / 2, 1e-12);
  EXPECT_EQ(m.tpot.count, 2u);
  EXPECT_NEAR(m.tpot.mean, (0.1 + 0.3) / 2, 1e-12);  // (0.3-0.1)/2 and (0.6-0.3)/1
  EXPECT_EQ(m.itl.count, 3u);                        // all gaps of all requests pooled
  EXPECT_NEAR(m.itl.median, 0.1, 1e-12);
  EXPECT_NEAR(m.e2el.mean, 0.45, 1e-12);
  EXPECT_EQ(m.max_concurrency, 3);  // failed requests were in flight too
}

TEST(BenchServeStats, EmptyRunAndPeakConcurrency) {
  const ServingMetrics m = compute_serving_metrics({}, 0);
  EXPECT_EQ(m.completed, 0);
  EXPECT_EQ(m.request_throughput, 0.0);
  EXPECT_EQ(m.ttft.count, 0u);
  EXPECT_EQ(m.max_concurrency, 0);
  // Back to back: one ends exactly when the next is sent, so never two at once.
  const std::vector<RequestTiming> serial = {request(0, {}, 1, 0), request(1, {}, 2, 0),
                                             request(2, {}, 3, 0)};
  EXPECT_EQ(peak_concurrency(serial), 1);
  const std::vector<RequestTiming> overlap = {request(0, {}, 3, 0), request(1, {}, 2, 0),
                                              request(1.5, {}, 4, 0)};
  EXPECT_EQ(peak_concurrency(overlap), 3);
}

}  // namespace
}  // namespace l2kv::cli
