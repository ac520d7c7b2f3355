// The arithmetic of `l2kv bench-serve`'s report, kept pure so it is tested without a server:
// percentiles as numpy's default (linear interpolation), and the serving metrics in vLLM's
// definitions (TTFT, TPOT = (e2e - ttft) / (tokens - 1), ITL = every gap between chunks).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace l2kv::cli {

// One request as the client saw it; times in seconds from the benchmark's start.
struct RequestTiming {
  bool success = false;
  double send_s = 0;            // request written to the socket
  double end_s = 0;             // stream ended (or failed)
  std::vector<double> chunk_s;  // arrival of every chunk that carried output text
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;  // from `usage`, else the number of chunks
  std::string error;          // why it failed (empty on success)
  int32_t turn = 1;           // its turn in a multi-turn conversation, from 1
};

// The p-th percentile (0..100) of `values` with linear interpolation between the closest
// ranks, as numpy.percentile's default; 0 for an empty input.
double percentile(std::vector<double> values, double p);

// Mean, population standard deviation and percentiles of one metric; all 0 when empty.
struct Summary {
  size_t count = 0;
  double mean = 0, stddev = 0, median = 0, p90 = 0, p99 = 0;
};
Summary summarize(std::vector<double> values);

// Time to first chunk (the whole latency when no chunk came).
double ttft_s(const RequestTiming& r);
// End-to-end latency.
double e2e_s(const RequestTiming& r);
// Time per output token after the first; false when the request has fewer than 2 tokens.
bool tpot_s(const RequestTiming& r, double* out);
// Gaps between successive chunks.
std::vector<double> inter_chunk_gaps(const RequestTiming& r);

// The most requests in flight at any instant (a request is in flight over [send_s, end_s)).
int32_t peak_concurrency(std::span<const RequestTiming> requests);

// The benchmark's report; latency summaries in seconds over successful requests only.
struct ServingMetrics {
  int64_t completed = 0, failed = 0;
  int64_t total_input_tokens = 0, total_output_tokens = 0;
  double duration_s = 0;
  double request_throughput = 0;      // successful requests per second
  double output_throughput = 0;       // output tokens per second
  double total_token_throughput = 0;  // (input + output) tokens per second
  Summary ttft, tpot, itl, e2el;
  int32_t max_concurrency = 0;
};
ServingMetrics compute_serving_metrics(std::span<const RequestTiming> requests, double duration_s);

// TTFT of the successful requests of each turn: element k summarizes turn k + 1, up to the
// highest turn of any request (a turn no request of which succeeded has count 0).
std::vector<Summary> ttft_by_turn(std::span<const RequestTiming> requests);

}  // namespace l2kv::cli
