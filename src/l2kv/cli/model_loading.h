// What every l2kv subcommand shares: the model and backend flags, the engine flags, and
// loading a model folder or a synthetic shape into a runner with its tokenizer.
#pragma once

#include <CLI/CLI.hpp>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "l2kv/chat/chat_template.h"
#include "l2kv/engine/engine.h"
#include "l2kv/model/cuda_model.h"
#include "l2kv/sampling/sampling_params.h"
#include "l2kv/tokenizer/tokenizer.h"

namespace l2kv {
class CudaRunner;
class TensorParallelCudaRunner;
}  // namespace l2kv

namespace l2kv::cli {

struct ModelOptions {
  std::string model;            // a Hugging Face folder or synthetic:NAME
  std::string tokenizer;        // a folder with tokenizer.json; empty = the model's
  std::string device = "auto";  // auto | cpu | cuda | cuda:N
  std::string attention = "split";
  std::string kv_prefetch = "auto";
  std::string kv_cache_dtype = "auto";    // auto (the model's dtype) | fp8_e4m3 (alias fp8)
  bool enforce_eager = false;             // no CUDA graphs
  bool calculate_kv_scales = true;        // fp8 scales from the first prompt where none are given
  int32_t fused_layer_max_rows = -1;      // the fused layer up to these rows; -1: default
  int32_t tensor_parallel_size = 1;       // ranks the model is split over (CPU backend so far)
  std::string gemm_tuning = "heuristic";  // heuristic | wide (Gemm::Tuning)
  int64_t gemm_tune_prompt_rows = Gemm::kDefaultPromptTuneMaxRows;  // 0: no prompt tuning
  bool window_kv_groups = true;          // off: --disable-hybrid-kv-cache-manager
  std::string fp8_activations = "w8a8";  // w8a8 | w8a8-separate | 16bit (fp8 checkpoints)
  uint64_t synthetic_seed = 1;
  std::string generation_config = "auto";  // auto (generation_config.json's defaults) | vllm
};

void add_model_options(CLI::App& app, ModelOptions& options);
void add_engine_options(CLI::App& app, EngineConfig& config);

struct LoadedModel {
  std::unique_ptr<ModelRunner> runner;
  std::optional<Tokenizer> tokenizer;     // from the folder's tokenizer.json, if it has one
  std::shared_ptr<CudaModel> cuda_model;  // set on the CUDA backend
  // `runner` as the CUDA runner it is (on the CUDA backend): valid while whoever owns `runner`
  // (it or the Engine it is handed to) keeps it.
  CudaRunner* cuda_runner = nullptr;
  // `runner` as the tensor-parallel runner it is (--tensor-parallel-size > 1 on CUDA); then
  // cuda_model and cuda_runner are rank 0's, whose forwards need the other ranks.
  TensorParallelCudaRunner* tensor_parallel_runner = nullptr;
  bool synthetic = false;
  std::string description;  // for logs: model, backend, dtype
  // Sampling defaults of requests that leave a setting out: l2kv's, with generation_config.json's
  // temperature, top_p, top_k, min_p and repetition_penalty over them (--generation-config auto).
  SamplingParams sampling_defaults;
  // generation_config.json's max_new_tokens: what a request that gives no max_tokens gets at
  // most (--generation-config auto); unset: l2kv's own default.
  std::optional<int32_t> default_max_tokens;
};

// True when `model` names a built-in synthetic shape ("synthetic:llama3-8b").
bool is_synthetic(const std::string& model);

// Loads the model on the chosen backend (auto: CUDA when a GPU is present). Prints progress
// to stderr. Throws l2kv::Error with a clear message (missing folder, unknown synthetic name,
// synthetic model without a GPU, ...).
LoadedModel load_model(const ModelOptions& options);

// The tokenizer's chat template for generate and serve, with a warning on stderr where it has
// none and the default (Llama 2's [INST] format) stands in. Throws what the template's parse does.
std::unique_ptr<ChatTemplate> load_chat_template(const Tokenizer& tokenizer);

}  // namespace l2kv::cli
