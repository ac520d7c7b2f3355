#include "l2kv/cli/model_loading.h"

#include <chrono>
#include <cstdio>
#include <type_traits>

#include "l2kv/cli/flags.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/engine/cpu_runner.h"
#include "l2kv/engine/cuda_runner.h"
#include "l2kv/engine/tensor_parallel_cuda_runner.h"

namespace l2kv::cli {

namespace fs = std::filesystem;

void add_model_options(CLI::App& app, ModelOptions& o) {
  app.add_option(
         "--model", o.model,
         "A Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or "
         "synthetic:NAME for random weights in a real shape (llama2-7b, llama3-8b, llama3-70b, "
         "qwen2.5-7b, qwen2.5-14b, qwen3-8b, each also as NAME-fp8 with fp8 "
         "projections, the mixtures of experts qwen3-30b-a3b, mixtral-8x7b, and "
         "gemma3-12b, gemma3-27b; CUDA only)")
      ->required();
  app.add_option("--tokenizer", o.tokenizer,
                 "A folder with tokenizer.json (and tokenizer_config.json with its chat template) "
                 "to use instead of the model folder's; gives synthetic models text")
      ->check(CLI::ExistingDirectory);
  app.add_option("--generation-config", o.generation_config,
                 "auto: requests that leave out temperature, top_p, top_k, min_p or "
                 "repetition_penalty take the model's generation_config.json values (vLLM's "
                 "default); vllm: l2kv's own defaults (1, 1, -1, 0, 1)")
      ->check(CLI::IsMember({"auto", "vllm"}))
      ->capture_default_str();
  app.add_option("--device", o.device,
                 "Backend: auto (CUDA when a GPU is present, else CPU), cpu, cuda or cuda:N")
      ->capture_default_str();
  app.add_option("--attention", o.attention,
                 "Decode attention kernel on CUDA: split (l2kv's split-KV kernel) or paged_v1 "
                 "(vLLM-v1-style kernel of the paper, with its L2 prefetch)")
      ->check(CLI::IsMember({"split", "paged_v1"}))
      ->capture_default_str();
  app.add_option("--kv-prefetch", o.kv_prefetch,
                 "L2 prefetch of the KV cache in decode attention: off, on (one step ahead), "
                 "on:N, or auto (each kernel's measured rule; for split: no prefetch distance, "
                 "and +pdl); suffixes +evict_last, +evict_first, +stream, +every_head, and +pdl "
                 "(split kernel: start during the kernel ahead (the QKV projection, or the "
                 "RoPE/KV-write kernel) and prefetch older KV "
                 "into L2 while it runs)")
      ->capture_default_str();
  app.add_option("--kv-cache-dtype", o.kv_cache_dtype,
                 "KV cache element type on CUDA: auto (the model's dtype) or fp8_e4m3 (alias "
                 "fp8: half the bytes per token, scaled by the checkpoint's per-layer "
                 "self_attn.k_scale/v_scale, else see --calculate-kv-scales; read by both "
                 "attention kernels)")
      ->check(CLI::IsMember({"auto", "fp8", "fp8_e4m3"}))
      ->capture_default_str();
  add_on_off_flag(app, "calculate-kv-scales", o.calculate_kv_scales,
                  "With an fp8 KV cache, layers whose checkpoint has no k_scale/v_scale get scales "
                  "from the first prompt's K and V (its largest |K| stored at 200 and |V| at 100 "
                  "of E4M3's 448, as vLLM's --calculate-kv-scales), fixed from then on. On by "
                  "default; --no-calculate-kv-scales uses scale 1, which saturates K above 448 "
                  "and stores values below 2^-6 in E4M3's coarse subnormal steps");
  app.add_option("--fused-layer-max-rows", o.fused_layer_max_rows,
                 "On CUDA, steps of up to this many rows (0-16; decode steps, short prompts) run "
                 "each decoder layer in its fused form (no RMSNorm kernels between the "
                 "projections: the norms inside them, SiLU x up and the residual adds in their "
                 "epilogues), larger steps in nine kernels. "
                 "Default: 16 for bf16 models with 16-bit weights, 1 for fp16 models and fp8 "
                 "weights (where the fused form is slower from two rows; bench/NOTES.md). 0 turns "
                 "it off")
      ->check(CLI::Range(0, 16));
  app.add_option("--tensor-parallel-size", o.tensor_parallel_size,
                 "Split the model over this many ranks (attention heads, MLP features and the "
                 "vocabulary; vLLM's flag): on CUDA one GPU per rank, from --device's on (needs "
                 "NCCL, libnccl.so.2, or L2KV_NCCL_LIBRARY naming it; at most 8), on the CPU "
                 "backend threads. Dense Llama, Mistral, Qwen2 and Qwen3 models")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--gemm-tuning", o.gemm_tuning,
                 "On CUDA, how the cuBLASLt projections of decode steps (17-256 rows) pick their "
                 "algorithm when first used: heuristic (time cuBLASLt's 32 suggestions) or wide "
                 "(also each algorithm's own suggestions with other split-K and cluster settings: "
                 "some hundreds per shape, a slower start)")
      ->check(CLI::IsMember({"heuristic", "wide"}))
      ->capture_default_str();
  app.add_option("--gemm-tune-prompt-rows", o.gemm_tune_prompt_rows,
                 "On CUDA, cuBLASLt projections of 257 up to this many rows (prompt chunks, mixed "
                 "steps) time cuBLASLt's suggestions once per bucket of row counts (2^k and "
                 "3 x 2^(k-1)) when first used, and the bucket's later shapes reuse the choice. "
                 "0 (default) takes cuBLASLt's first suggestion for them, which ran Llama-3-8B's "
                 "prompts as fast on an H100 without the timing on each bucket's first step")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option(
         "--fp8-activations", o.fp8_activations,
         "On CUDA, how fp8-weight models multiply steps of more than 32 rows (fewer run "
         "the fp8 GEMV on 16-bit activations): w8a8 quantizes each row to E4M3 with a "
         "scale of its own and multiplies in fp8, the norms and SiLU x up writing the "
         "codes and applying the product's scales as they read it; w8a8-separate runs "
         "the same products with separate quantize and rescale kernels (for comparison); "
         "16bit widens the weights to 16 bits instead (more accurate, slower). Other values than "
         "w8a8 are refused for 16-bit models and on the CPU backend")
      ->check(CLI::IsMember({"w8a8", "w8a8-separate", "16bit"}))
      ->capture_default_str();
  app.add_flag("--enforce-eager", o.enforce_eager,
               "Run decode steps kernel by kernel instead of replaying CUDA graphs");
  app.add_flag("!--disable-hybrid-kv-cache-manager", o.window_kv_groups,
               "Keep one KV block table for every layer (vLLM's flag). By default a model with "
               "sliding-window layers (Gemma 3) keeps them in block tables of their own and "
               "frees their blocks as they leave the window, so a long conversation holds the "
               "window, not its length, on those layers");
}

void add_engine_options(CLI::App& app, EngineConfig& c) {
  app.add_option("--block-size", c.block_size, "Tokens per KV-cache block (16, 32 or 64)")
      ->check(CLI::IsMember({16, 32, 64}))
      ->capture_default_str();
  app.add_option("--max-num-seqs", c.max_num_seqs, "Most sequences running in one step")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--max-num-batched-tokens", c.max_num_batched_tokens,
                 "Most tokens in one step (prompt chunks and decodes together); longer prompts "
                 "are prefilled in chunks")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-model-len", c.max_model_len,
                 "Longest prompt + output in tokens (0 = the model's max_position_embeddings)")
      ->check(whole_number(0, std::numeric_limits<int32_t>::max()))
      ->capture_default_str();
  app.add_option("--num-kv-blocks", c.num_kv_blocks,
                 "KV-cache blocks to allocate (0 = as many as --gpu-memory-utilization allows)")
      ->check(whole_number(0, std::numeric_limits<int32_t>::max()))
      ->capture_default_str();
  app.add_option("--gpu-memory-utilization", c.gpu_memory_utilization,
                 "Fraction of the GPU's memory l2kv may use for weights, workspace and KV cache")
      ->check(CLI::Range(0.01, 1.0))
      ->capture_default_str();
  add_on_off_flag(app, "enable-prefix-caching", c.enable_prefix_caching,
                  "Reuse the KV cache of whole blocks of prompt prefixes earlier requests "
                  "computed (on by default; --no-enable-prefix-caching turns it off)");
  add_on_off_flag(app, "async-scheduling", c.async_scheduling,
                  "Plan and launch each step while the GPU still runs the one before, its "
                  "sampled tokens passed on on the device; stops are seen a step late and the "
                  "extra token dropped (off by default)");
  app.add_option("--engine-seed", c.seed,
                 "Seed that draws the sampling seeds of requests that give none")
      ->check(unsigned_number())
      ->capture_default_str();
}

bool is_synthetic(const std::string& model) {
  return model.rfind("synthetic:", 0) == 0;
}

namespace {

// -1 for the CPU, else the CUDA device index.
int resolve_device(const std::string& device) {
  if (device == "cpu") return -1;
  const bool gpu = cuda_device_available();
  if (device == "auto") return gpu ? 0 : -1;
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    if (!gpu) throw Error("--device " + device + ": no CUDA GPU is available on this machine");
    if (device == "cuda") return 0;
    try {
      return std::stoi(device.substr(5));
    } catch (const std::exception&) {
      throw Error("--device " + device + ": expected cuda:N");
    }
  }
  throw Error("--device " + device + ": expected auto, cpu, cuda or cuda:N");
}

CudaRunnerOptions cuda_runner_options(const ModelOptions& o) {
  CudaRunnerOptions options;
  options.attention = parse_decode_kernel(o.attention);
  options.kv_prefetch = parse_prefetch_policy(o.kv_prefetch);
  options.cuda_graphs = !o.enforce_eager;
  options.kv_storage = o.kv_cache_dtype == "auto" ? KvStorage::kModelDtype : KvStorage::kFp8E4M3;
  options.calculate_kv_scales = o.calculate_kv_scales;
  options.fused_layer_max_rows = o.fused_layer_max_rows;
  options.window_kv_groups = o.window_kv_groups;
  return options;
}

// --fp8-activations other than the default applies to fp8-weight models only.
void check_fp8_activations(const ModelOptions& o, const ModelConfig& config) {
  if (!config.fp8_weights && o.fp8_activations != "w8a8")
    throw Error("--fp8-activations " + o.fp8_activations + ": " + o.model +
                " has 16-bit weights; the flag applies to fp8-weight models");
}

// How the model's GEMMs run (every rank alike); throws for --fp8-activations on a 16-bit model.
void configure_cuda_model(const ModelOptions& o, CudaModel& model) {
  model.set_gemm_tuning(o.gemm_tuning == "wide" ? Gemm::Tuning::kWide : Gemm::Tuning::kHeuristic);
  model.set_gemm_prompt_tune_max_rows(o.gemm_tune_prompt_rows);
  check_fp8_activations(o, model.config());
  model.set_fp8_activations(o.fp8_activations != "16bit");
  model.set_fp8_fused_scales(o.fp8_activations == "w8a8");
}

// --tensor-parallel-size N on CUDA: ranks on devices first_device .. first_device + N - 1.
std::unique_ptr<TensorParallelCudaRunner> load_tensor_parallel(const ModelOptions& o,
                                                               int first_device,
                                                               std::string& description) {
  const int32_t n = o.tensor_parallel_size;
  int count = 0;
  L2KV_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (first_device + n > count)
    throw Error("--tensor-parallel-size " + std::to_string(n) + " from cuda:" +
                std::to_string(first_device) + " needs " + std::to_string(first_device + n) +
                " GPUs; this machine has " + std::to_string(count));
  TensorParallelModelSource source;
  if (is_synthetic(o.model)) {
    source.synthetic = ModelConfig::synthetic(o.model.substr(std::string("synthetic:").size()));
    source.seed = o.synthetic_seed;
  } else {
    source.folder = o.model;
  }
  const ModelConfig whole =
      source.synthetic ? *source.synthetic : ModelConfig::from_folder(o.model);
  tp_shard(whole, 0, n);  // a split it refuses, refused before any GPU work
  check_fp8_activations(o, whole);
  std::vector<int> devices;
  for (int32_t r = 0; r < n; ++r) devices.push_back(first_device + r);
  // The caller's own CUDA work (a benchmark's ceiling probe) goes to rank 0's device.
  L2KV_CUDA_CHECK(cudaSetDevice(first_device));
  std::fprintf(stderr, "l2kv: loading %s over %d GPUs (tensor parallel, cuda:%d..%d)\n",
               o.model.c_str(), n, first_device, first_device + n - 1);
  const CudaRunnerOptions options = cuda_runner_options(o);
  auto runner = std::make_unique<TensorParallelCudaRunner>(
      devices, source, options, [&o](CudaModel& model) { configure_cuda_model(o, model); });
  description = o.model + " on " + runner->device_name() + " (" +
                std::string(dtype_name(whole.dtype)) + ", attention " + o.attention +
                ", kv-prefetch " + o.kv_prefetch + ", kv-cache " +
                std::string(kv_storage_name(options.kv_storage)) +
                (o.enforce_eager ? ", eager" : ", CUDA graphs") + ")";
  return runner;
}

}  // namespace

LoadedModel load_model(const ModelOptions& o) {
  LoadedModel loaded;
  const int device = resolve_device(o.device);
  const auto start = std::chrono::steady_clock::now();
  loaded.synthetic = is_synthetic(o.model);
  parse_prefetch_policy(o.kv_prefetch);  // a bad value is an error on every backend
  if (loaded.synthetic)                  // an unknown name says so before anything else
    ModelConfig::synthetic(o.model.substr(std::string("synthetic:").size()));
  if (!loaded.synthetic) {
    if (!fs::is_directory(o.model))
      throw Error("--model " + o.model + ": not a folder (give a Hugging Face model folder or " +
                  "synthetic:NAME)");
    if (fs::exists(fs::path(o.model) / "tokenizer.json"))
      loaded.tokenizer = Tokenizer::from_folder(o.model);
  }
  if (!o.tokenizer.empty()) loaded.tokenizer = Tokenizer::from_folder(o.tokenizer);
  if (device < 0) {
    if (loaded.synthetic)
      throw Error("--model " + o.model +
                  ": synthetic models run on the CUDA backend only (no GPU here, or --device cpu)");
    if (o.kv_cache_dtype != "auto")
      throw Error("--kv-cache-dtype " + o.kv_cache_dtype +
                  ": the CPU backend keeps its KV cache in float32; fp8 needs a CUDA GPU");
    if (o.fp8_activations != "w8a8")
      throw Error("--fp8-activations " + o.fp8_activations +
                  ": the CPU backend dequantizes fp8 checkpoints at load and runs float32 "
                  "activations; the flag applies to the CUDA backend");
    // The CUDA backend's kernel choices mean nothing here: refused rather than ignored.
    const auto cuda_only = [](const std::string& flag) {
      throw Error(flag + " applies to the CUDA backend only (this run is on the CPU)");
    };
    if (o.attention != "split") cuda_only("--attention " + o.attention);
    if (o.kv_prefetch != "auto") cuda_only("--kv-prefetch " + o.kv_prefetch);
    if (o.gemm_tuning != "heuristic") cuda_only("--gemm-tuning " + o.gemm_tuning);
    if (o.gemm_tune_prompt_rows != Gemm::kDefaultPromptTuneMaxRows)
      cuda_only("--gemm-tune-prompt-rows");
    if (o.fused_layer_max_rows >= 0) cuda_only("--fused-layer-max-rows");
    if (o.enforce_eager) cuda_only("--enforce-eager");
    std::fprintf(stderr, "l2kv: loading %s on the CPU (float32)\n", o.model.c_str());
    auto runner = std::make_unique<CpuRunner>(fs::path(o.model), o.tensor_parallel_size);
    runner->set_window_kv_groups(o.window_kv_groups);
    loaded.description = o.model + " on " + runner->device_name() + " (float32)";
    loaded.runner = std::move(runner);
  } else if (o.tensor_parallel_size > 1) {
    auto runner = load_tensor_parallel(o, device, loaded.description);
    loaded.tensor_parallel_runner = runner.get();
    loaded.cuda_runner = &runner->rank_runner(0);
    loaded.cuda_model = runner->rank_model(0);
    loaded.runner = std::move(runner);
  } else {
    L2KV_CUDA_CHECK(cudaSetDevice(device));
    std::fprintf(stderr, "l2kv: loading %s on cuda:%d\n", o.model.c_str(), device);
    if (loaded.synthetic)
      loaded.cuda_model = std::make_shared<CudaModel>(
          ModelConfig::synthetic(o.model.substr(std::string("synthetic:").size())),
          o.synthetic_seed);
    else
      loaded.cuda_model = std::make_shared<CudaModel>(fs::path(o.model));
    configure_cuda_model(o, *loaded.cuda_model);
    const CudaRunnerOptions options = cuda_runner_options(o);
    auto runner = std::make_unique<CudaRunner>(loaded.cuda_model, options);
    const int32_t fused_rows = runner->step_state().fused_layer_max_rows();
    const std::string layer = fused_rows == loaded.cuda_model->default_fused_layer_max_rows() ? ""
                              : fused_rows == 0 ? ", nine kernels per layer"
                              : fused_rows == 1
                                  ? ", fused layer at one row"
                                  : ", fused layer up to " + std::to_string(fused_rows) + " rows";
    loaded.description = o.model + " on " + runner->device_name() + " (" +
                         std::string(dtype_name(loaded.cuda_model->config().dtype)) +
                         ", attention " + o.attention + ", kv-prefetch " + o.kv_prefetch +
                         ", kv-cache " + std::string(kv_storage_name(options.kv_storage)) +
                         (options.kv_storage == KvStorage::kFp8E4M3 && !o.calculate_kv_scales
                              ? " without calculated scales"
                              : "") +
                         layer + (o.enforce_eager ? ", eager" : ", CUDA graphs") +
                         (o.gemm_tuning == "wide" ? ", wide GEMM tuning" : "") +
                         (loaded.cuda_model->config().fp8_weights && o.fp8_activations != "w8a8"
                              ? ", fp8 activations " + o.fp8_activations
                              : "") +
                         ")";
    loaded.cuda_runner = runner.get();
    loaded.runner = std::move(runner);
  }
  if (loaded.tokenizer && loaded.tokenizer->vocab_size() > loaded.runner->config().vocab_size)
    throw Error("the tokenizer has " + std::to_string(loaded.tokenizer->vocab_size()) +
                " tokens but the model's vocabulary has " +
                std::to_string(loaded.runner->config().vocab_size));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "l2kv: loaded %s in %.1f s\n", loaded.description.c_str(), seconds);
  const ModelConfig::GenerationDefaults& d = loaded.runner->config().generation_defaults;
  if (o.generation_config == "auto" && !d.empty()) {
    SamplingParams& p = loaded.sampling_defaults;
    std::string said;
    const auto take = [&](const char* name, const auto& value, auto& field) {
      if (!value) return;
      field = static_cast<std::remove_reference_t<decltype(field)>>(*value);
      char text[64];
      std::snprintf(text, sizeof text, "%s%s %g", said.empty() ? "" : ", ", name,
                    static_cast<double>(*value));
      said += text;
    };
    take("temperature", d.temperature, p.temperature);
    take("top_p", d.top_p, p.top_p);
    take("top_k", d.top_k, p.top_k);
    take("min_p", d.min_p, p.min_p);
    take("repetition_penalty", d.repetition_penalty, p.repetition_penalty);
    if (d.max_new_tokens) {
      int32_t& limit = loaded.default_max_tokens.emplace();
      take("max_new_tokens", d.max_new_tokens, limit);
    }
    std::fprintf(stderr,
                 "l2kv: sampling defaults from generation_config.json: %s (a request's own values "
                 "come first; --generation-config vllm ignores these)\n",
                 said.c_str());
  }
  return loaded;
}

std::unique_ptr<ChatTemplate> load_chat_template(const Tokenizer& tokenizer) {
  if (tokenizer.chat_template().empty())
    std::fprintf(stderr,
                 "l2kv: warning: the tokenizer has no chat template; using l2kv's default "
                 "(Llama 2's [INST] format)\n");
  return std::make_unique<ChatTemplate>(ChatTemplate::for_tokenizer(tokenizer));
}

}  // namespace l2kv::cli
