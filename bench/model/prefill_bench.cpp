// l2kv_bench_prefill: prefill throughput of the CUDA backend on a synthetic model (random
// weights in a real model's shapes), against the bf16 matrix rate measured in the same run
// (cuBLASLt, 8192^3), with the split of time between projections and attention; then the two
// prefill-attention kernels (wgmma and warp MMA) alone, their outputs compared, over 1 and
// several prompts of 512 to 32K tokens (the sweep
// bench/model/sdpa_prefill_peers.py repeats for PyTorch's SDPA backends; scripts/bench_prefill.sh
// runs both in one go).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench_timing.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_info.h"
#include "l2kv/engine/cuda_step_state.h"
#include "l2kv/engine/engine.h"
#include "l2kv/kernels/attention/prefill_attention.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/random_fill.h"
#include "l2kv/model/cuda_model.h"

namespace {

// The median rate of a bf16 8192^3 product on cuBLASLt: its heuristic's first choice, or the
// fastest of its suggestions (`timed`, as the prompt buckets choose).
double gemm_peak_tflops(bool timed, cudaStream_t stream) {
  const int64_t n = 8192;
  uint16_t *a, *b, *c;
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&a), n * n * 2));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&b), n * n * 2));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&c), n * n * 2));
  l2kv::fill_random(a, n * n, l2kv::DType::kBFloat16, 1.f, 1, stream);
  l2kv::fill_random(b, n * n, l2kv::DType::kBFloat16, 1.f, 2, stream);
  l2kv::Gemm gemm;
  gemm.set_prompt_tune_max_rows(timed ? n : 0);
  for (int i = 0; i < 3; ++i) gemm.linear(l2kv::DType::kBFloat16, a, b, c, n, n, n, stream);
  cudaEvent_t s, e;
  L2KV_CUDA_CHECK(cudaEventCreate(&s));
  L2KV_CUDA_CHECK(cudaEventCreate(&e));
  std::vector<double> tflops;
  for (int i = 0; i < 10; ++i) {
    L2KV_CUDA_CHECK(cudaEventRecord(s, stream));
    gemm.linear(l2kv::DType::kBFloat16, a, b, c, n, n, n, stream);
    L2KV_CUDA_CHECK(cudaEventRecord(e, stream));
    L2KV_CUDA_CHECK(cudaEventSynchronize(e));
    float ms = 0;
    L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, s, e));
    tflops.push_back(2.0 * n * n * n / (ms * 1e-3) / 1e12);
  }
  cudaFree(a), cudaFree(b), cudaFree(c);
  std::sort(tflops.begin(), tflops.end());
  return tflops[tflops.size() / 2];
}

// FLOPs of one layer's causal attention (Q K^T and P V, the masked half not counted) over
// `prompts` prompts of `tokens` tokens each.
double causal_attention_flops(const l2kv::ModelConfig& c, int prompts, int tokens) {
  return 4.0 * c.num_q_heads * c.head_dim * prompts * (tokens * (tokens + 1.0) / 2.0);
}

// The prefill attention kernels alone on one problem: `prompts` prompts of `tokens` tokens each
// in one launch, with the model's head layout (bf16, HND, KV blocks of `block` tokens in reverse
// order).
struct AttentionTiming {
  double wgmma_us, warp_mma_us;
  double max_diff;  // max |wgmma - warp MMA| over max |warp MMA|: the two kernels agree
};

AttentionTiming time_prefill_attention(const l2kv::ModelConfig& c, int prompts, int tokens,
                                       int block, cudaStream_t stream) {
  const int blocks_per_seq = (tokens + block - 1) / block;
  const int blocks = blocks_per_seq * prompts;
  const int64_t pool = int64_t{blocks} * block * c.num_kv_heads * c.head_dim;
  const int64_t q_elems = int64_t{tokens} * prompts * c.num_q_heads * c.head_dim;
  uint16_t *k, *v, *q, *out;
  int32_t *table, *lens;
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&k), pool * 2));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&v), pool * 2));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&q), q_elems * 2));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&out), q_elems * 2));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&table), blocks * 4));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&lens), prompts * 4));
  l2kv::fill_random(k, pool, l2kv::DType::kBFloat16, 1.f, 11, stream);
  l2kv::fill_random(v, pool, l2kv::DType::kBFloat16, 1.f, 12, stream);
  l2kv::fill_random(q, q_elems, l2kv::DType::kBFloat16, 1.f, 13, stream);
  std::vector<int32_t> host_table(blocks);
  for (int i = 0; i < blocks; ++i) host_table[i] = blocks - 1 - i;  // non-contiguous
  L2KV_CUDA_CHECK(cudaMemcpy(table, host_table.data(), blocks * 4, cudaMemcpyHostToDevice));
  const std::vector<int32_t> host_lens(static_cast<size_t>(prompts), tokens);
  L2KV_CUDA_CHECK(cudaMemcpy(lens, host_lens.data(), prompts * 4, cudaMemcpyHostToDevice));
  l2kv::PagedKvCache kv;
  kv.k_pool = k, kv.v_pool = v, kv.block_table = table, kv.seq_lens = lens;
  kv.num_blocks = blocks, kv.block_size = block,
  kv.num_kv_heads = static_cast<int32_t>(c.num_kv_heads);
  kv.head_dim = static_cast<int32_t>(c.head_dim), kv.batch_size = prompts;
  kv.max_blocks_per_seq = blocks_per_seq;
  kv.layout = l2kv::KvLayout::kHND, kv.dtype = l2kv::DType::kBFloat16;
  std::vector<l2kv::PrefillChunk> chunks;
  for (int p = 0; p < prompts; ++p) chunks.push_back({p, p * tokens, tokens, 0});
  const float scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
  cudaEvent_t s, e;
  L2KV_CUDA_CHECK(cudaEventCreate(&s));
  L2KV_CUDA_CHECK(cudaEventCreate(&e));
  // Median µs of one kernel; its output is left in `host_out`.
  auto time_kernel = [&](l2kv::PrefillKernel kernel, std::vector<uint16_t>& host_out) {
    l2kv::PrefillAttention prefill;
    prefill.reserve(tokens * prompts, prompts, static_cast<int32_t>(c.num_kv_heads),
                    static_cast<int32_t>(c.num_q_heads));
    prefill.set_kernel(kernel);
    prefill.plan(kv, static_cast<int32_t>(c.num_q_heads), chunks, stream);
    L2KV_CUDA_CHECK(cudaMemsetAsync(out, 0xff, q_elems * 2, stream));  // NaN until written
    for (int i = 0; i < 3; ++i)
      prefill.run(q, out, kv, static_cast<int32_t>(c.num_q_heads), scale, stream);
    std::vector<double> us;
    for (int i = 0; i < 20; ++i) {
      L2KV_CUDA_CHECK(cudaEventRecord(s, stream));
      prefill.run(q, out, kv, static_cast<int32_t>(c.num_q_heads), scale, stream);
      L2KV_CUDA_CHECK(cudaEventRecord(e, stream));
      L2KV_CUDA_CHECK(cudaEventSynchronize(e));
      float ms = 0;
      L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, s, e));
      us.push_back(ms * 1e3);
    }
    host_out.resize(static_cast<size_t>(q_elems));
    L2KV_CUDA_CHECK(cudaMemcpy(host_out.data(), out, q_elems * 2, cudaMemcpyDeviceToHost));
    std::sort(us.begin(), us.end());
    return us[us.size() / 2];
  };
  std::vector<uint16_t> wgmma_out, warp_out;
  AttentionTiming t{};
  t.wgmma_us = time_kernel(l2kv::PrefillKernel::kWgmma, wgmma_out);
  t.warp_mma_us = time_kernel(l2kv::PrefillKernel::kWarpMma, warp_out);
  double max_ref = 0, max_diff = 0;
  for (size_t i = 0; i < warp_out.size(); ++i) {
    const double a = l2kv::dtype_bits_to_float(l2kv::DType::kBFloat16, wgmma_out[i]);
    const double b = l2kv::dtype_bits_to_float(l2kv::DType::kBFloat16, warp_out[i]);
    max_ref = std::max(max_ref, std::fabs(b));
    max_diff = std::isnan(a) || std::isnan(b) ? INFINITY : std::max(max_diff, std::fabs(a - b));
  }
  t.max_diff = max_diff / std::max(max_ref, 1e-30);
  cudaEventDestroy(s), cudaEventDestroy(e);
  cudaFree(k), cudaFree(v), cudaFree(q), cudaFree(out), cudaFree(table), cudaFree(lens);
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_name = "llama3-8b";
  int batch = 8, prompt = 512, reps = 5;
  std::vector<int> attention_lengths{512, 1024, 2048, 4096, 8192, 16384, 32768};
  std::vector<int> attention_prompts{1, 4};
  const int engine_block_size = l2kv::EngineConfig{}.block_size;  // the whole prefill's
  int attention_block = engine_block_size;
  int64_t gemm_tune_rows = l2kv::Gemm::kDefaultTuneMaxRows;
  int64_t gemm_tune_prompt_rows = l2kv::Gemm::kDefaultPromptTuneMaxRows;
  std::string json_path;
  CLI::App app{"l2kv_bench_prefill: prefill throughput of the CUDA backend on a synthetic model"};
  app.add_option("--model", model_name,
                 "Synthetic model: llama2-7b, llama3-8b, qwen2.5-7b, qwen2.5-14b")
      ->capture_default_str();
  app.add_option("--batch", batch, "Prompts per prefill")
      ->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--prompt", prompt, "Tokens per prompt")
      ->check(CLI::Range(1, 32768))
      ->capture_default_str();
  app.add_option("--reps", reps, "Timed prefills (median reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--attention-lengths", attention_lengths,
                 "Prompt lengths of the prefill-attention kernel sweep")
      ->check(CLI::Range(1, 131072))
      ->capture_default_str();
  app.add_option("--attention-prompts", attention_prompts,
                 "Prompts per launch in the prefill-attention kernel sweep")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--attention-block-size", attention_block,
                 "KV block (page) size of the prefill-attention kernel sweep, in tokens: the "
                 "wgmma kernel copies K and V by one TMA box per block and 64-element half")
      ->check(CLI::IsMember({16, 32, 64}))
      ->capture_default_str();
  app.add_option("--gemm-tune-rows", gemm_tune_rows,
                 "cuBLASLt projections of up to this many rows time cuBLASLt's candidate "
                 "algorithms on first use of each shape and keep the fastest")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--gemm-tune-prompt-rows", gemm_tune_prompt_rows,
                 "Larger ones up to this many rows time them once per bucket of row counts "
                 "(Gemm::set_prompt_tune_max_rows); beyond, cuBLASLt's first choice. 0: never")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--json", json_path, "Write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  constexpr int64_t kMaxSweepTokens = int64_t{1} << 20;  // 4 GiB of q and out in bf16
  for (int count : attention_prompts)
    for (int length : attention_lengths)
      if (int64_t{count} * length > kMaxSweepTokens) {
        std::fprintf(stderr,
                     "l2kv_bench_prefill: %d prompts x %d tokens in one launch is more than the "
                     "sweep's %lld tokens\n",
                     count, length, static_cast<long long>(kMaxSweepTokens));
        return 1;
      }
  try {
    if (!l2kv::cuda_device_available()) {
      std::fprintf(stderr, "l2kv_bench_prefill: no CUDA GPU on this machine\n");
      return 2;
    }
    const auto config = l2kv::ModelConfig::synthetic(model_name);
    const double first_choice_peak = gemm_peak_tflops(false, nullptr);
    const double timed_peak = gemm_peak_tflops(true, nullptr);
    // The bar is the stronger of the two.
    const double peak = std::max(first_choice_peak, timed_peak);
    const int blocks_per_seq = (prompt + engine_block_size - 1) / engine_block_size;
    std::printf(
        "l2kv prefill on %s: synthetic:%s (%.2f B parameters), %d x %d tokens, KV blocks of %d, "
        "GEMMs tuned per shape up to %lld rows, per bucket up to %lld; cuBLASLt bf16 8192^3: "
        "%.0f TFLOP/s (first choice), %.0f (timed)\n",
        l2kv::query_device_info(0).name.c_str(), model_name.c_str(), config.parameter_count() / 1e9,
        batch, prompt, engine_block_size, static_cast<long long>(gemm_tune_rows),
        static_cast<long long>(gemm_tune_prompt_rows), first_choice_peak, timed_peak);
    auto model = std::make_shared<l2kv::CudaModel>(config, 7);
    model->set_gemm_tune_max_rows(gemm_tune_rows);
    model->set_gemm_prompt_tune_max_rows(gemm_tune_prompt_rows);
    l2kv::CudaStepState state(model);
    state.allocate_workspace({batch * prompt, batch, prompt, 0});
    state.allocate_kv_cache(batch * blocks_per_seq + 1, engine_block_size);  // block 0 stays unused
    std::vector<int32_t> tables(static_cast<size_t>(batch * blocks_per_seq));
    for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i) + 1;
    std::vector<std::vector<int32_t>> prompts(batch);
    for (int b = 0; b < batch; ++b)
      for (int t = 0; t < prompt; ++t)
        prompts[b].push_back(static_cast<int32_t>((b * 7919 + t * 104729) % config.vocab_size));
    const int64_t q_dim = config.num_q_heads * config.head_dim,
                  kv_dim = config.num_kv_heads * config.head_dim;
    const double linear_params =
        static_cast<double>(config.num_layers) *
        (config.hidden_size * (q_dim + 2 * kv_dim) + q_dim * config.hidden_size +
         3.0 * config.hidden_size * config.intermediate_size);
    const double tokens = static_cast<double>(batch) * prompt;
    const double attention_flops =
        config.num_layers * causal_attention_flops(config, batch, prompt);
    const double flops = 2.0 * linear_params * tokens +
                         2.0 * config.vocab_size * config.hidden_size * batch + attention_flops;
    std::vector<l2kv::CudaStepState::OpTimes> runs;
    std::vector<l2kv::BatchSequence> seqs;
    for (int b = 0; b < batch; ++b)
      seqs.push_back({prompts[b], 0,
                      std::span<const int32_t>(tables.data() + int64_t{b} * blocks_per_seq,
                                               static_cast<size_t>(blocks_per_seq)),
                      true});
    // Each rep runs the step twice: with per-op events (the time split, untimed by the helper)
    // and without them (each event adds a bubble between kernels), back to back so that both see
    // the same clocks. A first pair warms up.
    auto evented_run = [&] {
      state.set_profiling(true);
      state.run_to_host(seqs, false, nullptr);
      state.set_profiling(false);
      state.prepare(seqs, 0, nullptr);
    };
    evented_run();
    state.forward(nullptr);
    const double total_ms =
        1e-3 * l2kv::bench::time_median_us(
                   reps, [&] { state.forward(nullptr); }, nullptr, /*in_graph=*/false,
                   [&] {
                     evented_run();
                     runs.push_back(state.last_op_times());
                   });
    std::sort(runs.begin(), runs.end(),
              [](const auto& a, const auto& b) { return a.total_ms < b.total_ms; });
    const auto& m = runs[runs.size() / 2];
    const double tflops = flops / (total_ms * 1e-3) / 1e12;
    std::printf(
        "prefill: %.2f ms (%.2f with per-op events), %.0f tokens/s, %.0f TFLOP/s = %.1f %% of the "
        "cuBLASLt rate\n",
        total_ms, m.total_ms, tokens / (total_ms * 1e-3), tflops, 100 * tflops / peak);
    std::printf(
        "time split (with per-op events): projections (cuBLASLt) %.2f ms (%.1f %%), attention "
        "%.2f ms (%.1f %%), other %.2f ms\n",
        m.gemm_ms, 100 * m.gemm_ms / m.total_ms, m.attention_ms, 100 * m.attention_ms / m.total_ms,
        m.total_ms - m.gemm_ms - m.attention_ms);
    nlohmann::json sweep = nlohmann::json::array();
    for (int count : attention_prompts)
      for (int length : attention_lengths) {
        const AttentionTiming t =
            time_prefill_attention(config, count, length, attention_block, nullptr);
        const double att_flops = causal_attention_flops(config, count, length);
        const double wgmma_tflops = att_flops / (t.wgmma_us * 1e-6) / 1e12;
        const double warp_tflops = att_flops / (t.warp_mma_us * 1e-6) / 1e12;
        std::printf(
            "prefill attention, %d x %d tokens, %lld:%lld heads, block %d: wgmma %.1f us, %.0f "
            "TFLOP/s; warp MMA %.1f us, %.0f TFLOP/s; max diff %.1e\n",
            count, length, static_cast<long long>(config.num_q_heads),
            static_cast<long long>(config.num_kv_heads), attention_block, t.wgmma_us, wgmma_tflops,
            t.warp_mma_us, warp_tflops, t.max_diff);
        sweep.push_back({{"prompts", count},
                         {"tokens", length},
                         {"block_size", attention_block},
                         {"us", t.wgmma_us},
                         {"tflops", wgmma_tflops},
                         {"warp_mma_us", t.warp_mma_us},
                         {"warp_mma_tflops", warp_tflops},
                         {"max_rel_diff", t.max_diff}});
      }
    if (!json_path.empty()) {
      const nlohmann::json doc = {{"device", l2kv::query_device_info(0).name},
                                  {"model", model_name},
                                  {"gemm_peak_tflops", peak},
                                  {"gemm_first_choice_tflops", first_choice_peak},
                                  {"gemm_timed_tflops", timed_peak},
                                  {"prefill",
                                   {{"batch", batch},
                                    {"prompt", prompt},
                                    {"block_size", engine_block_size},
                                    {"gemm_tune_rows", gemm_tune_rows},
                                    {"gemm_tune_prompt_rows", gemm_tune_prompt_rows},
                                    {"total_ms", total_ms},
                                    {"total_ms_with_op_events", m.total_ms},
                                    {"tflops", tflops},
                                    {"fraction_of_gemm_rate", tflops / peak},
                                    {"projections_ms", m.gemm_ms},
                                    {"attention_ms", m.attention_ms}}},
                                  {"attention", sweep}};
      std::ofstream(json_path) << doc.dump(2) << "\n";
      std::printf("wrote %s\n", json_path.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "l2kv_bench_prefill: %s\n", e.what());
    return 1;
  }
  return 0;
}
