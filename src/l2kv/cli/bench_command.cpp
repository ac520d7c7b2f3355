#include "l2kv/cli/bench_command.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_kernels.h"
#include "l2kv/cli/flags.h"
#include "l2kv/cli/latency_stats.h"
#include "l2kv/cli/model_loading.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_array.h"
#include "l2kv/core/device_info.h"
#include "l2kv/core/error.h"
#include "l2kv/engine/cuda_runner.h"
#include "l2kv/engine/tensor_parallel_cuda_runner.h"
#include "l2kv/kernels/random_fill.h"
#include "l2kv/model/kv_cache_groups.h"
#include "l2kv/profiling/kernel_trace.h"
#include "l2kv/profiling/step_profile.h"
#include "l2kv/sampling/sampling_params.h"
#include "l2kv/structured/grammar_matcher.h"
#include "l2kv/structured/regex_grammar.h"
#include "l2kv/structured/tokenizer_vocabulary.h"

namespace l2kv::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct BenchOptions {
  ModelOptions model;
  EngineConfig engine;
  std::vector<int32_t> input_lens = {512};
  std::vector<int32_t> output_lens = {512};
  std::vector<int32_t> concurrency = {1, 16, 64};
  int32_t num_prompts = 0;  // 0 = one per concurrent slot
  std::vector<std::string> variants = {"split", "paged_v1:off", "paged_v1:on"};
  std::string mode = "both";
  std::vector<int32_t> steady_batches = {1, 16, 64};
  std::vector<int32_t> steady_contexts = {1024};
  std::vector<int32_t> steady_chunks = {0};
  int32_t steady_reps = 20;
  bool profile = false;
  std::string json_path, markdown_path;
  double time_budget_s = 0;
  // When set, every e2e point runs twice in a row: free, then each output constrained by this
  // regex (the grammar masks' cost on the decode step).
  std::string structured_regex;
  // What every e2e request samples with: greedy unless the sampling flags say otherwise.
  SamplingParams sampling = [] {
    SamplingParams p;
    p.temperature = 0.f;
    return p;
  }();
  std::string command_line;
};

struct Variant {
  std::string name;
  DecodeKernel kernel;
  PrefetchPolicy policy;
  std::string prefetch_text;
};

Variant parse_variant(const std::string& text) {
  const size_t colon = text.find(':');
  Variant v;
  v.name = text;
  v.kernel = parse_decode_kernel(text.substr(0, colon));
  v.prefetch_text = colon == std::string::npos ? "auto" : text.substr(colon + 1);
  v.policy = parse_prefetch_policy(v.prefetch_text);
  return v;
}

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Streaming-read ceiling over 2 GiB, median of 20 (bytes per second).
double measure_read_ceiling(cudaStream_t stream) {
  int device = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&device));
  const DeviceInfo info = query_device_info(device);
  const int64_t bytes = int64_t{2} << 30;
  DeviceArray<uint8_t> data(static_cast<size_t>(bytes));
  DeviceArray<uint32_t> sink(static_cast<size_t>(info.sm_count) * 8 * 256);
  fill_random(data.ptr, bytes / 2, DType::kBFloat16, 1.f, 99, stream);
  cudaEvent_t a, b;
  L2KV_CUDA_CHECK(cudaEventCreate(&a));
  L2KV_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms(20);
  bench::launch_streaming_read(data.ptr, bytes, sink.ptr, info.sm_count, stream);
  for (float& t : ms) {
    L2KV_CUDA_CHECK(cudaEventRecord(a, stream));
    bench::launch_streaming_read(data.ptr, bytes, sink.ptr, info.sm_count, stream);
    L2KV_CUDA_CHECK(cudaEventRecord(b, stream));
    L2KV_CUDA_CHECK(cudaEventSynchronize(b));
    L2KV_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::nth_element(ms.begin(), ms.begin() + 10, ms.end());
  return static_cast<double>(bytes) / (ms[10] * 1e-3);
}

// Bytes of K and V a decode step reads for one sequence of `length` tokens (its new one
// included), as the model stores them (16-bit or fp8): every layer's, and of a sliding-window
// layer (Gemma 3) only its window's.
double kv_bytes_read(const CudaStepState& state, double length) {
  const ModelConfig& c = state.config();
  // kv_block_bytes holds one layer per slot of the state's KV cache groups.
  const double per_layer_token =
      static_cast<double>(state.kv_block_bytes(1)) / state.kv_cache_groups().num_slots;
  double tokens = 0;
  for (int64_t l = 0; l < c.num_layers; ++l)
    tokens += c.is_sliding(l) ? std::min(length, static_cast<double>(c.sliding_window)) : length;
  return per_layer_token * tokens;
}

// One decode step at `batch` sequences of `context` tokens, KV filled with random values:
// median step time over replays (graph and eager) and a profiled eager run. With `chunk` > 0
// the step also prefills a new sequence's first `chunk` prompt tokens, as a server's step does
// when a request arrives while others decode (such a step runs eagerly: no graph). The step
// runs in a state of its own on the runner's model, stored as the runner's `options` say.
nlohmann::ordered_json run_steady_point(const std::shared_ptr<CudaModel>& model,
                                        const CudaRunnerOptions& options, const Variant& variant,
                                        int32_t batch, int32_t context, int32_t chunk,
                                        int32_t max_model_len, int32_t block_size, int32_t reps,
                                        double ceiling, KernelTrace* trace, cudaStream_t stream) {
  CudaStepState state(model);
  state.set_kv_storage(options.kv_storage);
  state.set_calculate_kv_scales(options.calculate_kv_scales);
  if (options.fused_layer_max_rows >= 0)
    state.set_fused_layer_max_rows(options.fused_layer_max_rows);
  const ModelConfig& c = state.config();
  // As the engine keeps them: a windowed group holds only the blocks of its window.
  const KvCacheGroups groups =
      options.window_kv_groups ? windowed_kv_cache_groups(c) : single_kv_cache_group(c);
  state.set_kv_cache_groups(groups);
  const int32_t blocks_per_seq = (context + block_size - 1) / block_size;
  const int32_t chunk_blocks = (chunk + block_size - 1) / block_size;
  std::vector<int32_t> first_held;  // [group]: the first block a decode row's table holds
  int32_t held_per_seq = 0;
  for (int32_t w : groups.windows) {
    first_held.push_back(w == 0 ? 0 : std::max(0, context - w) / block_size);
    held_per_seq += blocks_per_seq - first_held.back();
  }
  // Block 0 is the pad rows' block (and the entries a window has left).
  const int32_t num_blocks = batch * held_per_seq + groups.num_groups() * chunk_blocks + 1;
  // The block tables' stride follows max_model_len, as in the engine (--max-model-len; by
  // default just what the point needs).
  state.allocate_workspace(
      {batch + chunk, batch + (chunk > 0 ? 1 : 0), std::max({context, chunk, max_model_len}), 0});
  // A point whose KV cache cannot fit beside the weights is reported, not attempted.
  size_t free_bytes = 0, total_bytes = 0;
  L2KV_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const double kv_bytes = static_cast<double>(state.kv_block_bytes(block_size)) * num_blocks;
  if (kv_bytes > 0.95 * static_cast<double>(free_bytes)) {
    char why[128];
    std::snprintf(why, sizeof why, "a KV cache of %.1f GB does not fit in the %.1f GB free",
                  kv_bytes / 1e9, static_cast<double>(free_bytes) / 1e9);
    return {{"mode", "steady"}, {"batch", batch}, {"context", context}, {"skipped", why}};
  }
  state.allocate_kv_cache(num_blocks, block_size);
  const int64_t pool_elems =
      static_cast<int64_t>(num_blocks) * block_size * c.num_kv_heads * c.head_dim;
  std::vector<const void*> filled;  // layers of different groups may share a pool
  for (int64_t l = 0; l < c.num_layers; ++l) {
    if (std::find(filled.begin(), filled.end(), state.k_pool(l)) != filled.end()) continue;
    filled.push_back(state.k_pool(l));
    if (state.kv_storage() == KvStorage::kFp8E4M3) {
      fill_random_fp8_e4m3(state.k_pool(l), pool_elems, 1.f, 1000 + 2 * l, stream);
      fill_random_fp8_e4m3(state.v_pool(l), pool_elems, 1.f, 1001 + 2 * l, stream);
    } else {
      fill_random(state.k_pool(l), pool_elems, c.dtype, 1.f, 1000 + 2 * l, stream);
      fill_random(state.v_pool(l), pool_elems, c.dtype, 1.f, 1001 + 2 * l, stream);
    }
  }
  state.set_decode_attention(variant.kernel, variant.policy);
  if (chunk == 0) {
    state.set_use_graphs(true);
    const int32_t size[] = {batch};
    state.capture_decode_graphs(size, stream);
  }

  // Shuffled tables: no sequence's blocks are contiguous. The decode rows' tables are the same
  // with and without a chunk, whose blocks come after theirs. [sequence][group]; entries a
  // window has left are block 0.
  std::vector<int32_t> blocks(static_cast<size_t>(num_blocks - 1));
  std::iota(blocks.begin(), blocks.end(), 1);
  std::shuffle(blocks.begin(), blocks.begin() + int64_t{batch} * held_per_seq,
               std::mt19937(batch * 7919 + context));
  const int32_t rows = batch + (chunk > 0 ? 1 : 0);
  std::vector<std::vector<std::vector<int32_t>>> tables(static_cast<size_t>(rows));
  std::vector<std::vector<std::span<const int32_t>>> table_spans(static_cast<size_t>(rows));
  size_t next_block = 0;
  for (int32_t s = 0; s < rows; ++s)
    for (int32_t g = 0; g < groups.num_groups(); ++g) {
      const bool decode_row = s < batch;
      std::vector<int32_t> table(static_cast<size_t>(decode_row ? blocks_per_seq : chunk_blocks),
                                 0);
      for (size_t i = decode_row ? static_cast<size_t>(first_held[static_cast<size_t>(g)]) : 0;
           i < table.size(); ++i)
        table[i] = blocks[next_block++];
      tables[static_cast<size_t>(s)].push_back(std::move(table));
    }
  for (int32_t s = 0; s < rows; ++s)
    for (const auto& table : tables[static_cast<size_t>(s)])
      table_spans[static_cast<size_t>(s)].emplace_back(table);
  std::vector<int32_t> tokens(static_cast<size_t>(batch));
  std::mt19937 rng(42);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % (c.vocab_size - 1)) + 1;
  std::vector<int32_t> chunk_tokens(static_cast<size_t>(chunk));
  for (auto& t : chunk_tokens) t = static_cast<int32_t>(rng() % (c.vocab_size - 1)) + 1;
  std::vector<BatchSequence> seqs;
  for (int32_t s = 0; s < batch; ++s)
    seqs.push_back({std::span<const int32_t>(&tokens[s], 1),
                    context - 1,
                    {},
                    true,
                    table_spans[static_cast<size_t>(s)]});
  if (chunk > 0)
    seqs.push_back({chunk_tokens, 0, {}, true, table_spans[static_cast<size_t>(batch)]});
  state.prepare(seqs, 0, stream);

  cudaEvent_t a, b;
  L2KV_CUDA_CHECK(cudaEventCreate(&a));
  L2KV_CUDA_CHECK(cudaEventCreate(&b));
  auto median_ms = [&](bool graphs) {
    state.set_use_graphs(graphs);
    for (int i = 0; i < 3; ++i) state.forward(stream);
    std::vector<float> ms(static_cast<size_t>(reps));
    for (float& t : ms) {
      L2KV_CUDA_CHECK(cudaEventRecord(a, stream));
      state.forward(stream);
      L2KV_CUDA_CHECK(cudaEventRecord(b, stream));
      L2KV_CUDA_CHECK(cudaEventSynchronize(b));
      L2KV_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    }
    std::nth_element(ms.begin(), ms.begin() + reps / 2, ms.end());
    return static_cast<double>(ms[reps / 2]);
  };
  const double graph_only_ms = chunk == 0 ? median_ms(true) : 0.0;
  const double eager_ms = median_ms(false);
  const double graph_ms = chunk == 0 ? graph_only_ms : eager_ms;  // a mixed step has no graph
  state.set_profiling(true);
  state.forward(stream);
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  const CudaStepState::OpTimes ops = state.last_op_times();
  state.set_profiling(false);
  state.set_use_graphs(chunk == 0);
  nlohmann::ordered_json kernel_profile;
  if (trace) {  // one step's kernels: a graph replay, or the eager mixed step
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
    trace->clear();
    state.forward(stream);
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
    // The step's rows: the decode rows and the chunk's tokens; logits for each of its `rows`
    // sequences.
    std::vector<ProjectionShape> shapes = decode_projections(c);
    for (ProjectionShape& shape : shapes)
      shape.rows = shape.kind == "lm_head" ? rows : batch + chunk;
    kernel_profile = profile_step(trace->collect(), shapes, ceiling);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  state.release_kv_cache();

  const double bytes = static_cast<double>(state.model().step_weight_bytes(batch)) +
                       batch * kv_bytes_read(state, context + 1.0);
  // A step with a prompt chunk also computes the chunk: its MBU would mean nothing.
  const nlohmann::ordered_json mbu =
      chunk == 0 ? nlohmann::ordered_json(bytes / (graph_ms * 1e-3 * ceiling)) : nullptr;
  return {{"mode", "steady"},
          {"attention", decode_kernel_name(variant.kernel)},
          {"kv_prefetch", variant.prefetch_text},
          {"batch", batch},
          {"concurrency", batch},
          {"context", context},
          {"chunk_tokens", chunk},
          {"step_ms", graph_ms},
          {"eager_step_ms", eager_ms},
          {"graphs", chunk == 0},
          {"output_tokens_per_s", batch / (graph_ms * 1e-3)},
          {"bytes_per_step", bytes},
          {"mbu", mbu},
          {"profile_eager_ms",
           {{"gemm", ops.gemm_ms}, {"attention", ops.attention_ms}, {"total", ops.total_ms}}},
          {"kernel_profile", kernel_profile}};
}

// The offline workload: `num_prompts` random prompts of input_len tokens, output_len tokens
// each (EOS ignored), at most `concurrency` in flight. Prompt i is drawn from seed
// 1234 + first_prompt + i: callers number the prompts of all points in a row, so no point
// finds an earlier point's prompts in the prefix cache (a 0 % hit rate, reported).
nlohmann::ordered_json run_e2e_point(Engine& engine, CudaRunner& runner, const CudaModel& model,
                                     const Variant& variant, int32_t input_len, int32_t output_len,
                                     int32_t concurrency, int32_t num_prompts, int64_t first_prompt,
                                     double ceiling, const SamplingParams& sampling,
                                     std::shared_ptr<const structured::CompiledGrammar> grammar) {
  const ModelConfig& c = model.config();
  struct Tracked {
    int32_t length = 0;  // prompt + generated
    int32_t generated = 0;
    double submitted_s = 0, first_token_s = -1, finish_s = -1;
    bool finished = false;
  };
  std::vector<Tracked> tracked(static_cast<size_t>(num_prompts));
  const auto start = Clock::now();
  int32_t submitted = 0, in_flight = 0, finished = 0;
  std::string failure;
  auto submit = [&] {
    GenerationRequest r;
    std::mt19937 rng(static_cast<uint32_t>(1234 + first_prompt + submitted));
    r.prompt.resize(static_cast<size_t>(input_len));
    for (auto& t : r.prompt) t = static_cast<int32_t>(rng() % (c.vocab_size - 200)) + 100;
    r.params = sampling;
    // Free outputs run to output_len; constrained ones (which refuse ignore_eos and min_tokens)
    // stop early only if greedy decoding picks EOS among the tokens the grammar allows.
    r.params.ignore_eos = grammar == nullptr;
    r.params.max_tokens = output_len;
    r.params.min_tokens = grammar ? 0 : output_len;
    r.grammar = grammar;
    Tracked* t = &tracked[static_cast<size_t>(submitted)];
    t->length = input_len;
    t->submitted_s = seconds_since(start);
    r.on_output = [t, &start, &in_flight, &finished, &failure](const RequestOutput& out) {
      const double now = seconds_since(start);
      if (!out.new_tokens.empty() && t->first_token_s < 0) t->first_token_s = now;
      t->generated = out.completion_tokens;
      t->length += static_cast<int32_t>(out.new_tokens.size());
      if (out.finished) {
        t->finished = true;
        t->finish_s = now;
        --in_flight;
        ++finished;
        if (out.finish_reason == FinishReason::kError) failure = out.error;
      }
    };
    engine.add_request(std::move(r));
    ++submitted;
    ++in_flight;
  };
  runner.reset_profile();
  double prefill_s = 0, decode_s = 0, decode_bytes = 0;
  int64_t decode_steps = 0;
  int32_t max_running = 0;
  int32_t peak_kv_blocks = 0;  // KV blocks held by requests (free and cached ones excluded)
  auto last_progress = Clock::now();
  const EngineStats point_start = engine.stats();  // totals of earlier points
  const int64_t tokens_before = point_start.generation_tokens;
  const int64_t total_tokens = int64_t{num_prompts} * output_len;
  while (finished < num_prompts) {
    while (submitted < num_prompts && in_flight < concurrency) submit();
    const EngineStats before = engine.stats();
    // KV the step reads if it is a decode step: every started sequence's, new token included.
    double kv_bytes = 0;
    for (int32_t i = 0; i < submitted; ++i)
      if (!tracked[i].finished && tracked[i].first_token_s >= 0)
        kv_bytes += kv_bytes_read(runner.step_state(), tracked[i].length + 1.0);
    const int32_t finished_before = finished;
    const auto step_start = Clock::now();
    if (!engine.step()) break;
    if (!failure.empty()) throw Error("benchmark request failed: " + failure);
    const double step_s = seconds_since(step_start);
    const EngineStats after = engine.stats();
    // The step's requests: those still running and those it finished (a one-token request whose
    // prompt fits one step is never running after a step).
    max_running = std::max(max_running, after.running + (finished - finished_before));
    peak_kv_blocks = std::max(peak_kv_blocks, after.kv_blocks_total - after.kv_blocks_free);
    if (after.prompt_tokens > before.prompt_tokens) {
      prefill_s += step_s;
    } else {
      decode_s += step_s;
      ++decode_steps;
      decode_bytes += static_cast<double>(model.step_weight_bytes(before.running)) + kv_bytes;
    }
    if (seconds_since(last_progress) > 2.0) {
      last_progress = Clock::now();
      std::fprintf(stderr, "\r  %s: %lld/%lld tokens, %d running, %.0f tokens/s   ",
                   variant.name.c_str(),
                   static_cast<long long>(after.generation_tokens - tokens_before),
                   static_cast<long long>(total_tokens), after.running,
                   (after.generation_tokens - tokens_before) / seconds_since(start));
    }
  }
  std::fprintf(stderr, "\r%*s\r", 100, "");
  const double wall = seconds_since(start);
  const EngineStats point_end = engine.stats();
  const int64_t cache_queries = point_end.prefix_cache_queries - point_start.prefix_cache_queries;
  const int64_t cache_hits = point_end.prefix_cache_hits - point_start.prefix_cache_hits;
  double tpot_sum = 0;
  int32_t tpot_count = 0;
  int64_t tokens = 0;
  std::vector<double> ttft_ms;  // from submission (a queued request waits too) to first token
  for (const auto& t : tracked) {
    tokens += t.generated;
    if (t.first_token_s >= 0) ttft_ms.push_back((t.first_token_s - t.submitted_s) * 1e3);
    if (t.generated > 1) {
      tpot_sum += (t.finish_s - t.first_token_s) / (t.generated - 1);
      ++tpot_count;
    }
  }
  const double mbu = decode_s > 0 ? decode_bytes / (decode_s * ceiling) : 0;
  const CudaRunner::StepProfile& prof = runner.profile();
  const double steps = static_cast<double>(std::max<int64_t>(1, prof.steps));
  const double step_wall_ms = (prefill_s + decode_s) * 1e3 / steps;
  return {{"mode", "e2e"},
          {"attention", decode_kernel_name(variant.kernel)},
          {"kv_prefetch", variant.prefetch_text},
          {"concurrency", concurrency},
          {"input_len", input_len},
          {"output_len", output_len},
          {"num_prompts", num_prompts},
          {"constrained", grammar != nullptr},
          {"output_tokens", tokens},
          {"seconds", wall},
          {"output_tokens_per_s", tokens / wall},
          {"tpot_ms", tpot_count ? tpot_sum / tpot_count * 1e3 : 0.0},
          {"ttft_median_ms", percentile(std::move(ttft_ms), 50)},
          {"prefill_s", prefill_s},
          {"decode_s", decode_s},
          {"step_ms", decode_steps ? decode_s / decode_steps * 1e3 : 0.0},
          {"mbu", mbu},
          {"graphs", true},
          {"max_concurrency_reached", max_running},
          {"peak_kv_blocks_in_use", peak_kv_blocks},
          {"kv_blocks_total", point_end.kv_blocks_total},
          {"prefix_caching", engine.config().enable_prefix_caching},
          {"async_scheduling", engine.config().async_scheduling},
          {"prefix_cache_queries", cache_queries},
          {"prefix_cache_hits", cache_hits},
          {"step_profile_ms",
           {{"steps", prof.steps},
            {"host_prepare", prof.host_prepare_ms / steps},
            {"gpu_forward", prof.gpu_forward_ms / steps},
            {"gpu_sample", prof.gpu_sample_ms / steps},
            {"execute", prof.execute_ms / steps},
            {"engine_outside_execute", step_wall_ms - prof.execute_ms / steps}}}};
}

std::string today() {
  char buf[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(buf, sizeof buf, "%Y-%m-%d", std::gmtime(&now));
  return buf;
}

int run_bench(const BenchOptions& o) {
  // What the command line alone decides is checked first, on any machine.
  if (!o.structured_regex.empty() && o.mode == "steady")
    throw Error("l2kv bench: --structured-regex constrains e2e points; use --mode e2e or both");
  std::vector<Variant> variants;
  for (const auto& v : o.variants) variants.push_back(parse_variant(v));
  if (!o.json_path.empty()) {
    const std::filesystem::path parent = std::filesystem::path(o.json_path).parent_path();
    if (!parent.empty() && !std::filesystem::is_directory(parent))
      throw Error("--json " + o.json_path + ": the folder " + parent.string() + " does not exist");
  }
  if (!cuda_device_available())
    throw Error("l2kv bench needs an NVIDIA Hopper GPU (sm_90); none is available here");
  ModelOptions model_options = o.model;
  if (model_options.device == "auto") model_options.device = "cuda";
  LoadedModel loaded = load_model(model_options);
  if (!loaded.cuda_model || !loaded.cuda_runner) throw Error("l2kv bench runs on the CUDA backend");
  // Tensor parallelism: e2e points through the engine; MBU, bytes and the step profile are
  // rank 0's (one GPU's share against one GPU's ceiling).
  TensorParallelCudaRunner* tensor_parallel = loaded.tensor_parallel_runner;
  if (tensor_parallel && o.mode != "e2e")
    throw Error("l2kv bench --tensor-parallel-size " +
                std::to_string(o.model.tensor_parallel_size) +
                ": use --mode e2e (steady points drive one GPU's step state directly)");
  std::shared_ptr<CudaModel> model = loaded.cuda_model;
  // Owned by loaded.runner, then by the e2e engine: both outlive every use here.
  CudaRunner* runner = loaded.cuda_runner;
  int device = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&device));
  const DeviceInfo info = query_device_info(device);
  const double ceiling = measure_read_ceiling(runner->stream());
  // Enabled before any graph is captured, so graph replays are traced too.
  std::unique_ptr<KernelTrace> trace;
  if (o.profile) {
    trace = std::make_unique<KernelTrace>();
  }
  std::fprintf(stderr, "l2kv bench: %s, %.2f GB of weights%s; streaming-read ceiling %.0f GB/s\n",
               info.name.c_str(), model->weight_bytes() / 1e9, tensor_parallel ? " per GPU" : "",
               ceiling / 1e9);

  nlohmann::ordered_json report = {{"card", info.name},
                                   {"date", today()},
                                   {"command", o.command_line},
                                   {"model", o.model.model},
                                   {"tensor_parallel_size", o.model.tensor_parallel_size},
                                   {"ceiling_gbps", ceiling / 1e9},
                                   {"weight_bytes", model->weight_bytes()},
                                   {"streamed_weight_bytes", model->streamed_weight_bytes()},
                                   {"cupti_profiled", o.profile},
                                   {"points", nlohmann::ordered_json::array()}};
  const auto start = Clock::now();
  auto over_budget = [&] { return o.time_budget_s > 0 && seconds_since(start) > o.time_budget_s; };
  auto save = [&] {
    if (o.json_path.empty()) return;
    std::ofstream(o.json_path) << report.dump(1) << "\n";
  };

  if (o.mode == "steady" || o.mode == "both") {
    for (int32_t chunk : o.steady_chunks)
      for (int32_t context : o.steady_contexts)
        for (int32_t batch : o.steady_batches)
          for (const Variant& v : variants) {
            if (over_budget()) break;
            auto point = run_steady_point(model, runner->options(), v, batch, context, chunk,
                                          o.engine.max_model_len, o.engine.block_size,
                                          o.steady_reps, ceiling, trace.get(), runner->stream());
            point["model"] = o.model.model;
            if (point.contains("skipped")) {
              std::printf("steady  %-14s B=%-4d ctx=%-6d skipped: %s\n", v.name.c_str(), batch,
                          context, point["skipped"].get<std::string>().c_str());
              report["points"].push_back(point);
              continue;
            }
            const std::string chunk_text =
                chunk > 0 ? " chunk=" + std::to_string(chunk) : std::string();
            char mbu_text[16] = "-";
            if (!point["mbu"].is_null())
              std::snprintf(mbu_text, sizeof mbu_text, "%.3f", point["mbu"].get<double>());
            std::printf(
                "steady  %-14s B=%-4d ctx=%-6d%s step %8.3f ms (eager %8.3f)  %9.1f tok/s  "
                "MBU %s\n",
                v.name.c_str(), batch, context, chunk_text.c_str(), point["step_ms"].get<double>(),
                point["eager_step_ms"].get<double>(), point["output_tokens_per_s"].get<double>(),
                mbu_text);
            if (trace) std::printf("%s", format_step_profile(point["kernel_profile"]).c_str());
            std::fflush(stdout);
            report["points"].push_back(point);
            save();
          }
  }
  if (o.mode == "e2e" || o.mode == "both") {
    EngineConfig config = o.engine;
    config.max_num_seqs = *std::max_element(o.concurrency.begin(), o.concurrency.end());
    // What the points need, unless --max-model-len asks for more (a server's default is the
    // model's whole context, which sets the block tables' stride).
    config.max_model_len = std::max(
        o.engine.max_model_len, *std::max_element(o.input_lens.begin(), o.input_lens.end()) +
                                    *std::max_element(o.output_lens.begin(), o.output_lens.end()));
    // The tokenizer (detokenized outputs) only where a grammar needs it, so free runs compare
    // with earlier ones.
    const bool with_text = !o.structured_regex.empty() && loaded.tokenizer;
    Engine engine(std::move(loaded.runner), with_text ? &*loaded.tokenizer : nullptr, config);
    std::shared_ptr<const structured::CompiledGrammar> regex;
    if (!o.structured_regex.empty()) {
      if (!loaded.tokenizer)
        throw Error(
            "--structured-regex needs a tokenizer (--tokenizer, or a model folder with "
            "tokenizer.json)");
      regex = std::make_shared<const structured::CompiledGrammar>(
          structured::regex_grammar(o.structured_regex),
          std::make_shared<const structured::TokenVocabulary>(structured::tokenizer_vocabulary(
              *loaded.tokenizer, model->config().vocab_size, engine.eos_token_ids())));
    }
    std::fprintf(stderr, "l2kv bench: KV cache of %d blocks of %d tokens\n",
                 engine.stats().kv_blocks_total, config.block_size);
    int64_t prompts_sent = 0;
    for (int32_t input_len : o.input_lens)
      for (int32_t output_len : o.output_lens)
        for (int32_t conc : o.concurrency)
          for (const Variant& v : variants) {
            if (over_budget()) {
              std::fprintf(stderr, "l2kv bench: time budget spent; remaining points skipped\n");
              break;
            }
            if (tensor_parallel)
              tensor_parallel->set_decode_attention(v.kernel, v.policy);
            else
              runner->set_decode_attention(v.kernel, v.policy);
            const int32_t prompts = o.num_prompts > 0 ? o.num_prompts : conc;
            for (const bool constrained : {false, true}) {
              if (constrained && !regex) break;
              if (trace) trace->clear();
              auto point =
                  run_e2e_point(engine, *runner, *model, v, input_len, output_len, conc, prompts,
                                prompts_sent, ceiling, o.sampling, constrained ? regex : nullptr);
              // Every kernel of the point, prefill and decode steps together: where the GPU
              // waited between them (the host's share of the time to first token).
              if (trace) point["kernel_profile"] = profile_step(trace->collect(), {}, ceiling);
              prompts_sent += prompts;
              point["model"] = o.model.model;
              point["sampling"] = {{"temperature", o.sampling.temperature},
                                   {"top_p", o.sampling.top_p},
                                   {"top_k", o.sampling.top_k},
                                   {"repetition_penalty", o.sampling.repetition_penalty},
                                   {"presence_penalty", o.sampling.presence_penalty},
                                   {"frequency_penalty", o.sampling.frequency_penalty}};
              if (constrained) point["structured_regex"] = o.structured_regex;
              std::printf(
                  "e2e     %-14s conc=%-4d in=%-6d out=%-5d %9.1f tok/s  TTFT %8.1f ms (median)  "
                  "TPOT %7.2f "
                  "ms"
                  "  prefill %6.2f s  decode %7.2f s  MBU %.3f  (max running %d)\n",
                  (v.name + (constrained ? " regex" : "")).c_str(), conc, input_len, output_len,
                  point["output_tokens_per_s"].get<double>(), point["ttft_median_ms"].get<double>(),
                  point["tpot_ms"].get<double>(), point["prefill_s"].get<double>(),
                  point["decode_s"].get<double>(), point["mbu"].get<double>(),
                  point["max_concurrency_reached"].get<int>());
              const auto& prof = point["step_profile_ms"];
              std::printf(
                  "        per step: host prepare %.3f ms, GPU forward %.3f ms, GPU sampling "
                  "%.3f ms, execute %.3f ms, engine outside execute %.3f ms%s\n",
                  prof["host_prepare"].get<double>(), prof["gpu_forward"].get<double>(),
                  prof["gpu_sample"].get<double>(), prof["execute"].get<double>(),
                  prof["engine_outside_execute"].get<double>(),
                  config.async_scheduling
                      ? " (asynchronous scheduling: a step's execute spans the next's launch)"
                      : "");
              const auto queries = point["prefix_cache_queries"].get<int64_t>();
              std::printf(
                  "        prefix cache %s: %lld of %lld prompt tokens hit (%.1f %%); KV blocks "
                  "in use at most %d of %d\n",
                  config.enable_prefix_caching ? "on" : "off",
                  static_cast<long long>(point["prefix_cache_hits"].get<int64_t>()),
                  static_cast<long long>(queries),
                  queries ? 100.0 * point["prefix_cache_hits"].get<double>() / queries : 0.0,
                  point["peak_kv_blocks_in_use"].get<int>(), point["kv_blocks_total"].get<int>());
              if (trace) std::printf("%s", format_step_profile(point["kernel_profile"]).c_str());
              std::fflush(stdout);
              report["points"].push_back(point);
              save();
            }
          }
  }
  save();
  return 0;
}

}  // namespace

std::function<int()> add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Decode throughput on a CUDA GPU: end to end (random prompts through the engine) and "
      "steady state (one decode step over a synthetically filled KV cache), for several "
      "decode-attention variants in one run, with MBU against the same-run read ceiling");
  o->model.model = "synthetic:llama3-8b";
  add_model_options(*cmd, o->model);
  cmd->get_option("--model")->required(false)->capture_default_str();
  add_engine_options(*cmd, o->engine);
  cmd->add_option("--input-len", o->input_lens,
                  "Prompt tokens per request (a list: e.g. 1024 8192 32000 with --output-len 1 "
                  "--concurrency 1 --num-prompts 3 gives the median time to first token of one "
                  "prompt at each length)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--output-len", o->output_lens, "Output tokens per request (a list)")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--concurrency", o->concurrency,
                  "Requests in flight (a list); more wait as in a server")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--num-prompts", o->num_prompts,
                  "Requests per point (0 = as many as the concurrency)")
      ->check(whole_number(0, 1 << 20))
      ->capture_default_str();
  cmd->add_option("--variants", o->variants,
                  "Decode attention variants, KERNEL[:PREFETCH] with KERNEL split or paged_v1 "
                  "and PREFETCH as --kv-prefetch (default auto)")
      ->capture_default_str();
  cmd->add_option("--mode", o->mode, "e2e, steady or both")
      ->check(CLI::IsMember({"e2e", "steady", "both"}))
      ->capture_default_str();
  cmd->add_option("--steady-batch", o->steady_batches, "Batches of the steady-state mode")
      ->check(whole_number(1, 4096))
      ->capture_default_str();
  cmd->add_option("--steady-context", o->steady_contexts, "Contexts of the steady-state mode")
      ->check(whole_number(1, 1 << 20))
      ->capture_default_str();
  cmd->add_option(
         "--steady-chunk", o->steady_chunks,
         "Prompt tokens a steady step also prefills (0 = none): the decode rows then share "
         "the step with a new sequence's chunk, as in a server when a request arrives "
         "(such steps run without CUDA graphs; compare their --profile with chunk 0's)")
      ->check(CLI::Range(0, 1 << 20))
      ->check(CLI::Validator(
          [](const std::string& value) {
            return value == "1" ? std::string("a chunk of one token is a decode row: give 0 or 2+")
                                : std::string();
          },
          "0 or 2+"))
      ->capture_default_str();
  cmd->add_flag("--profile", o->profile,
                "Steady points also print one step's kernels (CUPTI; a graph replay, or the eager "
                "step of --steady-chunk): time per kernel, gaps between kernels, each projection's "
                "GB/s against the read ceiling. E2e points print the same over all their steps' "
                "kernels (where the GPU waited for the host). "
                "Times of a profiled run include CUPTI's per-kernel overhead");
  cmd->add_option("--steady-reps", o->steady_reps, "Timed replays per steady point (median)")
      ->check(CLI::Range(3, 10000))
      ->capture_default_str();
  cmd->add_option("--structured-regex", o->structured_regex,
                  "Run every e2e point a second time with each output constrained by this regex "
                  "(structured outputs; needs --tokenizer for a synthetic model), so the line "
                  "after each point shows what the grammar masks cost. A regex that never has to "
                  "end (\"[a-z ]*\") keeps the outputs as long as the free ones");
  cmd->add_option("--temperature", o->sampling.temperature,
                  "e2e requests' sampling temperature (0 = greedy)")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--top-p", o->sampling.top_p, "e2e requests' nucleus sampling mass, in (0, 1]")
      ->check(CLI::Range(1e-6, 1.0))
      ->capture_default_str();
  cmd->add_option("--top-k", o->sampling.top_k, "e2e requests' top-k (-1 = no limit)")
      ->check(CLI::Range(-1, 1 << 30))
      ->capture_default_str();
  cmd->add_option("--repetition-penalty", o->sampling.repetition_penalty,
                  "e2e requests' repetition penalty over prompt and output tokens (1 = off; "
                  "Qwen2.5's generation_config.json asks 1.05), to measure what penalties cost")
      ->check(CLI::Range(1e-3, 100.0))
      ->capture_default_str();
  cmd->add_option("--presence-penalty", o->sampling.presence_penalty,
                  "e2e requests' presence penalty over output tokens, in [-2, 2]")
      ->check(CLI::Range(-2.0, 2.0))
      ->capture_default_str();
  cmd->add_option("--frequency-penalty", o->sampling.frequency_penalty,
                  "e2e requests' frequency penalty over output tokens, in [-2, 2]")
      ->check(CLI::Range(-2.0, 2.0))
      ->capture_default_str();
  cmd->add_option("--json", o->json_path, "Write every point as JSON here");
  cmd->add_option("--time-budget-s", o->time_budget_s,
                  "Skip the remaining points once this many seconds have passed (0 = none)")
      ->check(CLI::Range(0.0, 1e9))
      ->capture_default_str();
  return [o, cmd] {
    o->command_line = command_line("l2kv bench", *cmd);
    return run_bench(*o);
  };
}

}  // namespace l2kv::cli
