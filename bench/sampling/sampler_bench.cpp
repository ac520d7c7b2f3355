// l2kv_bench_sampler: what GpuSampler::sample() costs a decode step, per sampling setting, row
// count and kind of logits, on the local GPU. "peaked" rows look like a model's (a body of
// N(0, 2) with 1-60 tokens lifted 6-20 above it), "flat" rows like the synthetic models' (N(0,
// 1.5) throughout, every token within a few logits of the largest). Each point is the median
// over --reps calls of the time between events around sample() on its stream: the upload of the
// rows, the kernel (one block per row) and the copy of the results back.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench_timing.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_array.h"
#include "l2kv/core/device_info.h"
#include "l2kv/sampling/gpu_sampler.h"
#include "l2kv/sampling/sampler.h"

namespace l2kv::bench {
namespace {

struct Setting {
  const char* name;
  SamplingParams params;
  bool history;  // 512 prompt + 128 output tokens for the penalties
};

std::vector<Setting> settings() {
  std::vector<Setting> s;
  auto add = [&](const char* name, auto&& set, bool history = false) {
    SamplingParams p;
    set(p);
    s.push_back({name, p, history});
  };
  add("greedy", [](SamplingParams& p) { p.temperature = 0.f; });
  add("temperature 1", [](SamplingParams&) {});
  add("top-p 0.9", [](SamplingParams& p) { p.temperature = 0.7f, p.top_p = 0.9f; });
  add("top-k 50", [](SamplingParams& p) { p.temperature = 0.7f, p.top_k = 50; });
  add("min-p 0.05", [](SamplingParams& p) { p.temperature = 0.8f, p.min_p = 0.05f; });
  add(
      "qwen2.5 defaults",  // its generation_config.json
      [](SamplingParams& p) {
        p.temperature = 0.7f, p.top_p = 0.8f, p.top_k = 20, p.repetition_penalty = 1.05f;
      },
      true);
  add("top-k 1000 + top-p 0.95",
      [](SamplingParams& p) { p.temperature = 0.8f, p.top_k = 1000, p.top_p = 0.95f; });
  add("top-p 0.9 + 5 logprobs",
      [](SamplingParams& p) { p.temperature = 0.7f, p.top_p = 0.9f, p.logprobs = 5; });
  return s;
}

std::vector<float> make_logits(const std::string& kind, int32_t rows, int64_t vocab,
                               uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> logits(static_cast<size_t>(rows) * vocab);
  std::normal_distribution<float> body(0.f, kind == "peaked" ? 2.f : 1.5f);
  std::uniform_real_distribution<float> lift(6.f, 20.f);
  std::uniform_int_distribution<int64_t> any(0, vocab - 1);
  for (int32_t r = 0; r < rows; ++r) {
    float* row = logits.data() + static_cast<size_t>(r) * vocab;
    for (int64_t i = 0; i < vocab; ++i) row[i] = body(rng);
    if (kind == "peaked") {
      const int peaks = 1 + static_cast<int>(rng() % 60);
      for (int i = 0; i < peaks; ++i) row[any(rng)] += lift(rng);
    }
  }
  return logits;
}

int run(int argc, char** argv) {
  std::vector<int32_t> row_counts{1, 16, 64};
  std::vector<std::string> kinds{"peaked", "flat"};
  int64_t vocab = 128256;
  int reps = 30;
  std::string json_path;
  CLI::App app{
      "GpuSampler::sample() per sampling setting, row count and kind of logits (peaked: as a "
      "model's; flat: as the synthetic models'), median microseconds"};
  app.add_option("--rows", row_counts, "Rows per call (a list)")->capture_default_str();
  app.add_option("--logits", kinds, "Kinds of logits: peaked, flat")
      ->check(CLI::IsMember({"peaked", "flat"}))
      ->capture_default_str();
  app.add_option("--vocab", vocab, "Vocabulary size")
      ->check(CLI::Range(int64_t{16}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--reps", reps, "Timed calls per point (median)")
      ->check(CLI::Range(3, 10000))
      ->capture_default_str();
  app.add_option("--json", json_path, "Write every point as JSON here");
  CLI11_PARSE(app, argc, argv);

  int ordinal = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&ordinal));
  const DeviceInfo device = query_device_info(ordinal);
  std::printf("l2kv_bench_sampler: %s, vocab %lld, median of %d calls\n", device.name.c_str(),
              static_cast<long long>(vocab), reps);
  const int32_t max_rows = *std::max_element(row_counts.begin(), row_counts.end());
  std::vector<int32_t> prompt(512), output(128);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 7919) % vocab);
  for (size_t i = 0; i < output.size(); ++i) output[i] = static_cast<int32_t>((i * 104729) % vocab);
  cudaStream_t stream = nullptr;
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  GpuSampler sampler(vocab, max_rows,
                     static_cast<int64_t>(max_rows) * (prompt.size() + output.size()),
                     GpuSampler::default_scratch_rows(max_rows, ordinal));
  nlohmann::ordered_json points = nlohmann::ordered_json::array();
  for (const std::string& kind : kinds) {
    const std::vector<float> host = make_logits(kind, max_rows, vocab, 7);
    DeviceArray<float> logits(host.size());
    L2KV_CUDA_CHECK(
        cudaMemcpy(logits.ptr, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
    for (const Setting& s : settings())
      for (int32_t rows : row_counts) {
        std::vector<SamplingRow> batch(static_cast<size_t>(rows));
        for (int32_t r = 0; r < rows; ++r) {
          batch[r].params = &s.params;
          batch[r].seed = 1000 + r;
          if (s.history) {
            batch[r].prompt_tokens = prompt;
            batch[r].output_tokens = output;
          }
        }
        int64_t step = 0;
        auto call = [&] {
          for (SamplingRow& row : batch) row.step = step;
          ++step;
          sampler.sample(logits.ptr, batch, stream);
        };
        call();  // warm-up
        L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
        const double us = time_median_us(reps, call, stream);
        std::printf("%-7s %-24s rows %-4d %9.1f us\n", kind.c_str(), s.name, rows, us);
        points.push_back({{"logits", kind}, {"setting", s.name}, {"rows", rows}, {"us", us}});
      }
  }
  cudaStreamDestroy(stream);
  if (!json_path.empty())
    std::ofstream(json_path) << nlohmann::ordered_json{{"device", device.name},
                                                       {"vocab", vocab},
                                                       {"reps", reps},
                                                       {"points", points}}
                                    .dump(1)
                             << "\n";
  return 0;
}

}  // namespace
}  // namespace l2kv::bench

int main(int argc, char** argv) {
  try {
    return l2kv::bench::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "l2kv_bench_sampler: %s\n", e.what());
    return 1;
  }
}
