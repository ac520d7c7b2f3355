// l2kv_bench_decode: decode-attention benchmark over the paper's head layouts, batches and
// contexts, for paged_v1 and split with prefetch off and on; cold L2 (flushed before every
// repetition) and warm; bandwidth against a streaming-read ceiling measured in the same run.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_kernels.h"
#include "bench_timing.h"
#include "decode_params.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_array.h"
#include "l2kv/core/device_info.h"
#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/split_decode.h"
#include "l2kv/kernels/random_fill.h"

namespace l2kv::bench {
namespace {

struct HeadLayout {
  std::string model;
  int32_t q_heads;
  int32_t kv_heads;
  int32_t head_dim;
};

const std::vector<HeadLayout> kPaperModels = {{"llama2-7b", 32, 32, 128},
                                              {"llama3-8b", 32, 8, 128},
                                              {"qwen2.5-7b", 28, 4, 128},
                                              {"qwen2.5-14b", 40, 8, 128}};

struct Options {
  std::vector<std::string> models{"llama2-7b", "llama3-8b", "qwen2.5-7b", "qwen2.5-14b"};
  std::vector<int32_t> batches{1, 8, 16, 32, 64, 128};
  std::vector<int32_t> contexts{1024, 4608, 8192, 8704, 32768};
  std::vector<int32_t> block_sizes{16, 32, 64};  // 32: the engine's default
  std::vector<std::string> layouts{"HND", "NHD"};
  std::vector<std::string> v1_policies{"off", "on", "auto"};
  std::vector<std::string> split_policies{"off", "on:1"};
  std::string dtype = "bf16";
  std::string kv_cache_dtype = "auto";  // auto (= dtype) | fp8_e4m3
  int reps = 50;
  double max_kv_gib = 40;
  bool profile_once = false;
  bool graph_timing = true;
  std::string flush = "clean";
  int split_tiles = 0;
  std::string json_path;
};

struct Variant {
  std::string kernel;  // paged_v1 | split
  PrefetchPolicy policy;
};

struct Machine {
  DeviceInfo info;
  cudaStream_t stream = nullptr;
  // Cold L2: write 256 MiB (> 2x the L2), then read another 256 MiB so the L2 ends full of
  // clean, unrelated lines. Without the read, the timed kernel would also pay for writing
  // back ~50 MB of dirty lines, which is the flush's cost, not the kernel's.
  DeviceArray<uint8_t> flush_write{size_t{256} << 20};
  DeviceArray<uint8_t> flush_read{size_t{256} << 20};
  DeviceArray<uint32_t> flush_sink{size_t{132} * 8 * 256};
  bool flush_leaves_dirty_lines = false;  // --flush write: the write alone (GPU.md's method)
  void flush_l2() const {
    L2KV_CUDA_CHECK(cudaMemsetAsync(flush_write.ptr, 0x5a, flush_write.size(), stream));
    if (flush_leaves_dirty_lines) return;
    launch_streaming_read(flush_read.ptr, static_cast<int64_t>(flush_read.size()), flush_sink.ptr,
                          std::min(info.sm_count, 132), stream);
  }
};

// Streaming-read ceiling over 2 GiB, median of 20.
double measure_read_ceiling_gbps(const Machine& m) {
  const int64_t bytes = int64_t{2} << 30;
  DeviceArray<uint8_t> data(bytes);
  DeviceArray<uint32_t> sink(static_cast<size_t>(m.info.sm_count) * 8 * 256);
  fill_random(data.ptr, bytes / 2, DType::kBFloat16, 1.f, 99, m.stream);
  auto launch = [&] {
    launch_streaming_read(data.ptr, bytes, sink.ptr, m.info.sm_count, m.stream);
  };
  launch();
  const double us = time_median_us(20, launch, m.stream);
  return bytes / (us * 1e-6) / 1e9;
}

nlohmann::json run_point(const Machine& m, SplitDecode& split, const HeadLayout& heads,
                         int32_t batch, int32_t context, int32_t block_size, KvLayout layout,
                         DType dtype, const std::vector<Variant>& variants, const Options& opt) {
  const int32_t blocks_per_seq = (context + block_size - 1) / block_size;
  const int32_t num_blocks = blocks_per_seq * batch;
  const int64_t kv_elems = int64_t{num_blocks} * block_size * heads.kv_heads * heads.head_dim;
  const bool fp8 = opt.kv_cache_dtype == "fp8_e4m3";
  const int64_t element_bytes = fp8 ? 1 : 2;
  const int64_t kv_bytes_moved =
      int64_t{2} * batch * context * heads.kv_heads * heads.head_dim * element_bytes;
  const int64_t qo_bytes = int64_t{2} * batch * heads.q_heads * heads.head_dim * 2;
  nlohmann::json point = {{"model", heads.model},
                          {"q_heads", heads.q_heads},
                          {"kv_heads", heads.kv_heads},
                          {"head_dim", heads.head_dim},
                          {"batch", batch},
                          {"context", context},
                          {"block_size", block_size},
                          {"layout", std::string(kv_layout_name(layout))},
                          {"kv_mib", kv_bytes_moved / 1048576.0},
                          {"results", nlohmann::json::array()}};
  if (kv_bytes_moved > opt.max_kv_gib * (1 << 30) ||
      2 * kv_elems * element_bytes + (int64_t{1} << 30) > m.info.global_memory_bytes * 9 / 10) {
    point["skipped"] =
        "KV of " + std::to_string(kv_bytes_moved >> 20) + " MiB exceeds the memory limit";
    return point;
  }
  DeviceArray<uint8_t> k_pool(kv_elems * element_bytes), v_pool(kv_elems * element_bytes);
  DeviceArray<uint16_t> q(size_t{1} * batch * heads.q_heads * heads.head_dim);
  DeviceArray<uint16_t> out(q.size());
  DeviceArray<int32_t> table(size_t{1} * num_blocks), lens(batch);
  if (fp8) {
    fill_random_fp8_e4m3(k_pool.ptr, kv_elems, 1.f, 1, m.stream);
    fill_random_fp8_e4m3(v_pool.ptr, kv_elems, 1.f, 2, m.stream);
  } else {
    fill_random(k_pool.ptr, kv_elems, dtype, 1.f, 1, m.stream);
    fill_random(v_pool.ptr, kv_elems, dtype, 1.f, 2, m.stream);
  }
  fill_random(q.ptr, q.size(), dtype, 2.f, 3, m.stream);
  // Shuffled block table: no sequence's blocks are contiguous in the pool.
  std::vector<int32_t> host_table(num_blocks);
  std::iota(host_table.begin(), host_table.end(), 0);
  std::shuffle(host_table.begin(), host_table.end(), std::mt19937(batch * 131 + context));
  const std::vector<int32_t> host_lens(batch, context);
  L2KV_CUDA_CHECK(cudaMemcpy(table.ptr, host_table.data(), num_blocks * 4, cudaMemcpyHostToDevice));
  L2KV_CUDA_CHECK(cudaMemcpy(lens.ptr, host_lens.data(), batch * 4, cudaMemcpyHostToDevice));

  PagedKvCache kv = {k_pool.ptr, v_pool.ptr,     table.ptr,      lens.ptr,
                     num_blocks, block_size,     heads.kv_heads, heads.head_dim,
                     batch,      blocks_per_seq, layout,         dtype};
  if (fp8) kv.storage = KvStorage::kFp8E4M3;
  DecodeAttentionParams p = decode_params(q.ptr, out.ptr, heads.q_heads, context, kv);
  validate_decode_attention(p, host_lens, host_table);
  split.plan(p, host_lens, m.stream);
  PagedV1Decode paged_v1;  // partitions beyond 48K tokens: workspace reserved before timing
  paged_v1.reserve(batch, heads.q_heads, heads.head_dim, context);
  point["split_items"] = split.current_plan().items.size();
  point["split_tiles_per_slice"] = split.current_plan().tiles_per_split;

  for (const Variant& v : variants) {
    nlohmann::json r = {{"kernel", v.kernel}, {"prefetch", to_string(v.policy)}};
    auto launch = [&] {
      if (v.kernel == "split")
        split.run(p, v.policy, m.stream);
      else
        paged_v1.run(p, v.policy, m.stream);
    };
    if (v.kernel == "split") r["prefetch_distance"] = split.prefetch_distance(v.policy);
    if (opt.profile_once) {
      m.flush_l2();
      launch();
      L2KV_CUDA_CHECK(cudaStreamSynchronize(m.stream));
      point["results"].push_back(r);
      continue;
    }
    for (int w = 0; w < 3; ++w) launch();
    const auto flush = [&] { m.flush_l2(); };
    const double cold = time_median_us(opt.reps, launch, m.stream, false, flush);
    const double warm = time_median_us(opt.reps, launch, m.stream);
    const double bytes = static_cast<double>(kv_bytes_moved + qo_bytes);
    r["cold_us"] = cold;
    r["warm_us"] = warm;
    if (opt.graph_timing && v.kernel == "split") {
      r["cold_graph_us"] = time_median_us(opt.reps, launch, m.stream, true, flush);
      r["warm_graph_us"] = time_median_us(opt.reps, launch, m.stream, true);
    }
    r["cold_gbps"] = bytes / (cold * 1e-6) / 1e9;
    r["warm_gbps"] = bytes / (warm * 1e-6) / 1e9;
    point["results"].push_back(r);
  }
  return point;
}

std::string format_us(const nlohmann::json& r, const char* key) {
  if (!r.contains(key)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", r[key].get<double>());
  return buf;
}

int run(const Options& opt, const std::string& command_line) {
  if (!cuda_device_available()) {
    std::fprintf(
        stderr,
        "l2kv_bench_decode: no CUDA GPU on this machine; the benchmark needs an H100 (sm_90).\n");
    return 2;
  }
  Machine m;
  m.info = query_device_info(0);
  if (m.info.compute_major < 9) {
    std::fprintf(stderr, "l2kv_bench_decode: %s is sm_%d%d; l2kv's kernels need Hopper (sm_90).\n",
                 m.info.name.c_str(), m.info.compute_major, m.info.compute_minor);
    return 2;
  }
  L2KV_CUDA_CHECK(cudaStreamCreate(&m.stream));
  m.flush_leaves_dirty_lines = opt.flush == "write";
  const DType dtype = opt.dtype == "fp16" ? DType::kFloat16 : DType::kBFloat16;

  std::vector<Variant> variants;
  for (const auto& s : opt.v1_policies)
    if (s != "none") variants.push_back({"paged_v1", parse_prefetch_policy(s)});
  for (const auto& s : opt.split_policies)
    if (s != "none") variants.push_back({"split", parse_prefetch_policy(s)});

  const double ceiling = opt.profile_once ? 0 : measure_read_ceiling_gbps(m);
  double empty_us = 0;
  if (!opt.profile_once) {
    for (int w = 0; w < 3; ++w) launch_empty(m.stream);
    empty_us = time_median_us(
        50, [&] { launch_empty(m.stream); }, m.stream);
  }
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
  nlohmann::json report = {{"device", m.info.name},
                           {"sm_count", m.info.sm_count},
                           {"l2_mib", m.info.l2_bytes / 1048576.0},
                           {"date", date},
                           {"command", command_line},
                           {"dtype", opt.dtype},
                           {"kv_cache_dtype", opt.kv_cache_dtype},
                           {"reps", opt.reps},
                           {"flush", opt.flush},
                           {"read_ceiling_gbps", ceiling},
                           {"empty_kernel_us", empty_us},
                           {"points", nlohmann::json::array()}};
  std::printf("l2kv decode-attention benchmark on %s (%d SMs, %.0f MiB L2), %s, %d reps\n",
              m.info.name.c_str(), m.info.sm_count, m.info.l2_bytes / 1048576.0, opt.dtype.c_str(),
              opt.reps);
  std::printf(
      "streaming-read ceiling %.0f GB/s; empty kernel %.1f us (event-timed); cold flush: %s\n",
      ceiling, empty_us, opt.flush.c_str());

  SplitDecode split(0);
  split.set_forced_tiles_per_split(opt.split_tiles);
  const auto started = std::chrono::steady_clock::now();
  size_t done = 0;
  const size_t total = opt.models.size() * opt.batches.size() * opt.contexts.size() *
                       opt.block_sizes.size() * opt.layouts.size();
  for (const auto& layout_name : opt.layouts)
    for (int32_t block_size : opt.block_sizes)
      for (const auto& model : opt.models)
        for (int32_t batch : opt.batches)
          for (int32_t context : opt.contexts) {
            const auto heads = std::find_if(kPaperModels.begin(), kPaperModels.end(),
                                            [&](const auto& h) { return h.model == model; });
            const KvLayout layout = layout_name == "NHD" ? KvLayout::kNHD : KvLayout::kHND;
            auto point = run_point(m, split, *heads, batch, context, block_size, layout, dtype,
                                   variants, opt);
            ++done;
            const double elapsed =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
            std::string line;
            for (const auto& r : point["results"])
              line +=
                  " " + r["kernel"].get<std::string>() + "[" + r["prefetch"].get<std::string>() +
                  "] " + format_us(r, "cold_us") + "/" + format_us(r, "warm_us") +
                  (r.contains("cold_graph_us")
                       ? " g" + format_us(r, "cold_graph_us") + "/" + format_us(r, "warm_graph_us")
                       : "");
            std::printf("[%zu/%zu %.0fs] %s %s b%d B=%d S=%d %.0fMiB%s%s\n", done, total, elapsed,
                        layout_name.c_str(), model.c_str(), block_size, batch, context,
                        point["kv_mib"].get<double>(), point.contains("skipped") ? " skipped" : "",
                        line.c_str());
            std::fflush(stdout);
            report["points"].push_back(point);
          }
  if (!opt.json_path.empty()) {
    std::ofstream f(opt.json_path);
    if (!f) throw Error("cannot write " + opt.json_path);
    f << report.dump(1) << "\n";
    std::printf("wrote %s\n", opt.json_path.c_str());
  }
  cudaStreamDestroy(m.stream);
  return 0;
}

}  // namespace
}  // namespace l2kv::bench

int main(int argc, char** argv) {
  l2kv::bench::Options opt;
  CLI::App app{
      "l2kv_bench_decode: decode-attention benchmark (paged_v1 and split, prefetch off/on, cold "
      "and warm L2).\n"
      "Times are medians of CUDA-event-timed repetitions; GB/s counts each KV byte once plus Q and "
      "output."};
  app.add_option(
         "--models", opt.models,
         "Head layouts: llama2-7b (32:32), llama3-8b (32:8), qwen2.5-7b (28:4), qwen2.5-14b (40:8)")
      ->check(CLI::IsMember({"llama2-7b", "llama3-8b", "qwen2.5-7b", "qwen2.5-14b"}))
      ->capture_default_str();
  app.add_option("--batches", opt.batches, "Batch sizes (sequences)")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--contexts", opt.contexts, "Cached tokens per sequence")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--block-sizes", opt.block_sizes, "KV block sizes (16, 32, 64)")
      ->check(CLI::IsMember({16, 32, 64}))
      ->capture_default_str();
  app.add_option("--layouts", opt.layouts, "KV layouts: HND, NHD")
      ->check(CLI::IsMember({"HND", "NHD"}))
      ->capture_default_str();
  app.add_option("--v1-prefetch", opt.v1_policies,
                 "paged_v1 prefetch policies to run: off, on, on:N (N warp iterations ahead); none "
                 "skips paged_v1")
      ->capture_default_str();
  app.add_option("--split-prefetch", opt.split_policies,
                 "split prefetch policies to run: off, on:N (tiles ahead), auto; suffixes "
                 "+evict_last, +evict_first, +stream; none skips split")
      ->capture_default_str();
  app.add_option("--dtype", opt.dtype, "Element type: bf16 or fp16")
      ->check(CLI::IsMember({"bf16", "fp16"}))
      ->capture_default_str();
  app.add_option("--kv-cache-dtype", opt.kv_cache_dtype,
                 "KV storage: auto (the --dtype) or fp8_e4m3")
      ->check(CLI::IsMember({"auto", "fp8_e4m3"}))
      ->capture_default_str();
  app.add_option("--reps", opt.reps,
                 "Timed repetitions per point, cold and warm each (median reported)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--max-kv-gib", opt.max_kv_gib, "Skip points whose KV cache exceeds this many GiB")
      ->capture_default_str();
  app.add_flag("--graph-timing,!--no-graph-timing", opt.graph_timing,
               "Also time split inside a CUDA graph (cold_graph_us, warm_graph_us)")
      ->capture_default_str();
  app.add_option(
         "--flush", opt.flush,
         "Cold-L2 flush before each cold repetition: clean (write 256 MiB, then read another 256 "
         "MiB "
         "so the L2 holds clean lines) or write (the write alone; the kernel then also pays the "
         "write-back of dirty lines)")
      ->check(CLI::IsMember({"clean", "write"}))
      ->capture_default_str();
  app.add_option(
         "--split-tiles", opt.split_tiles,
         "Force split's slice length in 64-token tiles (0 = the planner's choice; for tuning)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--profile-once", opt.profile_once,
               "Run each variant once after an L2 flush, untimed (for ncu)");
  app.add_option("--json", opt.json_path, "Write all results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  std::string command_line;
  for (int i = 0; i < argc; ++i) command_line += (i ? " " : "") + std::string(argv[i]);
  try {
    for (const auto& s : opt.v1_policies)
      if (s != "none") l2kv::parse_prefetch_policy(s);
    for (const auto& s : opt.split_policies)
      if (s != "none") l2kv::parse_prefetch_policy(s);
    return l2kv::bench::run(opt, command_line);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "l2kv_bench_decode: %s\n", e.what());
    return 1;
  }
}
