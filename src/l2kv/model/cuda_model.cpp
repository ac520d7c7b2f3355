#include "l2kv/model/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/random_fill.h"
#include "l2kv/model/decoder_graph.h"
#include "l2kv/model/hf_weights.h"
#include "l2kv/model/safetensors.h"

namespace l2kv {
namespace {

// A device allocation freed on destruction.
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  explicit DeviceArray(size_t n = 0) {
    if (n) L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T)));
  }
  DeviceArray(DeviceArray&& o) noexcept : ptr(std::exchange(o.ptr, nullptr)) {}
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(ptr, o.ptr);
    return *this;
  }
  ~DeviceArray() {
    if (ptr) cudaFree(ptr);
  }
};

DeviceArray<uint16_t> upload_16bit(DType dtype, const std::vector<float>& host) {
  std::vector<uint16_t> bits(host.size());
  for (size_t i = 0; i < host.size(); ++i) bits[i] = float_to_dtype_bits(dtype, host[i]);
  DeviceArray<uint16_t> d(host.size());
  L2KV_CUDA_CHECK(cudaMemcpy(d.ptr, bits.data(), bits.size() * 2, cudaMemcpyHostToDevice));
  return d;
}

// A projection stored as fp8 E4M3 [out, in] with one scale per output channel.
struct Fp8Matrix {
  DeviceArray<uint8_t> data;
  DeviceArray<float> scale;
  Fp8Weights view() const { return {data.ptr, scale.ptr, true}; }
};

// Stored fp8 projections stacked by rows (QKV: q, k, v), uploaded with their row scales.
Fp8Matrix upload_fp8(std::initializer_list<const HfFp8Projection*> parts) {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  for (const HfFp8Projection* p : parts) {
    codes.insert(codes.end(), p->codes.begin(), p->codes.end());
    scales.insert(scales.end(), p->row_scales.begin(), p->row_scales.end());
  }
  Fp8Matrix m{DeviceArray<uint8_t>(codes.size()), DeviceArray<float>(scales.size())};
  L2KV_CUDA_CHECK(cudaMemcpy(m.data.ptr, codes.data(), codes.size(), cudaMemcpyHostToDevice));
  L2KV_CUDA_CHECK(cudaMemcpy(m.scale.ptr, scales.data(), scales.size() * sizeof(float),
                             cudaMemcpyHostToDevice));
  return m;
}

int32_t ceil_div(int64_t a, int64_t b) {
  return static_cast<int32_t>((a + b - 1) / b);
}

}  // namespace

const char* decode_kernel_name(DecodeKernel kernel) {
  return kernel == DecodeKernel::kSplit ? "split" : "paged_v1";
}

DecodeKernel parse_decode_kernel(const std::string& name) {
  if (name == "split") return DecodeKernel::kSplit;
  if (name == "paged_v1") return DecodeKernel::kPagedV1;
  throw Error("attention kernel '" + name + "': expected split or paged_v1");
}

struct CudaModel::Weights {
  struct Layer {
    // 16-bit projections, or with config fp8_weights the *8 ones (qkv etc. then stay empty).
    DeviceArray<uint16_t> input_norm, post_norm, qkv, qkv_bias, o, gate_up, down;
    Fp8Matrix qkv8, o8, gate_up8, down8;
    DeviceArray<uint16_t> q_norm, k_norm;  // [head_dim] each, with qk_norm (Qwen3)
    float k_scale = 1.f, v_scale = 1.f;    // fp8 KV cache
    bool checkpoint_kv_scales = false;     // else calculated from the first prompt when on
  };
  DeviceArray<uint16_t> embed, lm_head, final_norm;
  std::vector<Layer> layers;
  const uint16_t* lm_head_ptr() const { return lm_head.ptr ? lm_head.ptr : embed.ptr; }
  // fp8 models: a projection widened to 16 bits for products of more rows than the fp8 GEMV
  // takes (prompts), as large as the largest projection.
  DeviceArray<uint16_t> fp8_widened;
};

// Activations for limits_.max_tokens rows and the step metadata. The metadata is one int32
// arena, [seq_lens S | last_rows S | ids T | positions T | slots T | block_table S x stride],
// mirrored in pinned host memory so a step uploads it with one copy.
struct CudaModel::Workspace {
  DeviceArray<float> residual, logits;
  // Two accumulators of the residual rows' sums of squares for the fused layer's RMSNorm
  // prologues: [0] feeds the QKV projections, [1] gate_up (kGemvMaxRows floats each).
  DeviceArray<float> sumsq;
  DeviceArray<uint16_t> h, qkv, q, attn, proj, gate_up, act, last;
  // Rows of h copied for hidden_row_logits (kMaxHiddenRowLogits x hidden).
  DeviceArray<uint16_t> hidden_rows;
  DeviceArray<int32_t> meta;
  int32_t* host_meta = nullptr;
  cudaEvent_t uploaded = nullptr;  // the last upload has left host_meta
  int64_t seq_lens = 0, last_rows = 0, ids = 0, positions = 0, slots = 0, block_table = 0;
  int32_t stride = 0;  // block-table entries per sequence
  ~Workspace() {
    if (host_meta) cudaFreeHost(host_meta);
    if (uploaded) cudaEventDestroy(uploaded);
  }
};

CudaModel::CudaModel(const std::filesystem::path& folder)
    : config_(ModelConfig::from_folder(folder)), weights_(std::make_unique<Weights>()) {
  const ModelConfig& c = config_;
  if (c.num_experts > 0)
    throw Error("CUDA backend: " + c.architecture +
                " (a mixture of experts) runs on the CPU backend only so far (--device cpu)");
  if (c.gemma)
    throw Error("CUDA backend: " + c.architecture +
                " (GeGLU, sandwich norms, sliding-window layers) runs on the CPU backend only so "
                "far (--device cpu)");
  const Checkpoint ckpt(folder);
  auto concat = [](std::vector<float> a, const std::vector<float>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  gate_up_interleaved_ = c.intermediate_size % 8 == 0;
  // gate_up's rows: interleaved in groups of 8 where the SiLU epilogue can use them, else
  // [gate | up].
  auto gate_up_rows = [&](const std::vector<float>& gate, const std::vector<float>& up,
                          int64_t hidden) {
    if (!gate_up_interleaved_) return concat(gate, up);
    std::vector<float> rows(gate.size() + up.size());
    const int64_t features = static_cast<int64_t>(gate.size()) / hidden;
    for (int64_t f = 0; f < features; ++f) {
      const int64_t at = (f / 8) * 16 + f % 8;
      std::copy_n(gate.begin() + f * hidden, hidden, rows.begin() + at * hidden);
      std::copy_n(up.begin() + f * hidden, hidden, rows.begin() + (at + 8) * hidden);
    }
    return rows;
  };
  {
    const HfGlobalWeights globals = load_hf_global_weights(ckpt, c);
    weights_->embed = upload_16bit(c.dtype, globals.embed);
    if (!globals.lm_head.empty()) weights_->lm_head = upload_16bit(c.dtype, globals.lm_head);
    weights_->final_norm = upload_16bit(c.dtype, globals.final_norm);
  }
  // fp8 gate/up rows interleave in the same groups of 8 as 16-bit ones.
  auto gate_up_fp8 = [&](const HfFp8Projection& gate, const HfFp8Projection& up) {
    if (!gate_up_interleaved_) return upload_fp8({&gate, &up});
    const auto features = static_cast<int64_t>(gate.row_scales.size());
    const int64_t in = c.hidden_size;
    HfFp8Projection rows;
    rows.codes.resize(gate.codes.size() + up.codes.size());
    rows.row_scales.resize(static_cast<size_t>(2 * features));
    for (int64_t f = 0; f < features; ++f) {
      const int64_t at = (f / 8) * 16 + f % 8;
      std::copy_n(gate.codes.begin() + f * in, in, rows.codes.begin() + at * in);
      std::copy_n(up.codes.begin() + f * in, in, rows.codes.begin() + (at + 8) * in);
      rows.row_scales[static_cast<size_t>(at)] = gate.row_scales[static_cast<size_t>(f)];
      rows.row_scales[static_cast<size_t>(at + 8)] = up.row_scales[static_cast<size_t>(f)];
    }
    return upload_fp8({&rows});
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const HfLayerWeights w = load_hf_layer_weights(
        ckpt, c, l, c.fp8_weights ? Fp8Projections::kAsStored : Fp8Projections::kDequantized);
    Weights::Layer layer;
    layer.input_norm = upload_16bit(c.dtype, w.input_norm);
    layer.post_norm = upload_16bit(c.dtype, w.post_attention_norm);
    if (c.fp8_weights) {
      layer.qkv8 = upload_fp8({&w.q8, &w.k8, &w.v8});
      layer.o8 = upload_fp8({&w.o8});
      layer.gate_up8 = gate_up_fp8(w.gate8, w.up8);
      layer.down8 = upload_fp8({&w.down8});
    } else {
      layer.qkv = upload_16bit(c.dtype, concat(concat(w.q, w.k), w.v));  // one fused projection
      layer.o = upload_16bit(c.dtype, w.o);
      layer.gate_up = upload_16bit(c.dtype, gate_up_rows(w.gate, w.up, c.hidden_size));
      layer.down = upload_16bit(c.dtype, w.down);
    }
    if (c.qkv_bias)
      layer.qkv_bias = upload_16bit(c.dtype, concat(concat(w.q_bias, w.k_bias), w.v_bias));
    if (c.qk_norm) {
      layer.q_norm = upload_16bit(c.dtype, w.q_norm);
      layer.k_norm = upload_16bit(c.dtype, w.k_norm);
    }
    layer.k_scale = w.k_scale;
    layer.v_scale = w.v_scale;
    layer.checkpoint_kv_scales = w.has_kv_scales;
    weights_->layers.push_back(std::move(layer));
  }
  init_common();
}

CudaModel::CudaModel(const ModelConfig& config, uint64_t seed)
    : config_(config), weights_(std::make_unique<Weights>()) {
  const ModelConfig& c = config_;
  gate_up_interleaved_ = c.intermediate_size % 8 == 0;
  const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  auto random = [&](int64_t n, float scale) {
    DeviceArray<uint16_t> d(static_cast<size_t>(n));
    fill_random(d.ptr, n, c.dtype, scale, seed++, nullptr);
    return d;
  };
  const std::vector<float> ones(static_cast<size_t>(c.hidden_size), 1.f);
  const std::vector<float> head_ones(static_cast<size_t>(c.head_dim), 1.f);
  const float scale = 0.02f * std::sqrt(3.f);  // std 0.02, as HF initializes
  // fp8 projections: codes uniform over E4M3's range, scaled back to the same std.
  auto random_fp8 = [&](int64_t out, int64_t in) {
    Fp8Matrix m{DeviceArray<uint8_t>(static_cast<size_t>(out * in)),
                DeviceArray<float>(static_cast<size_t>(out))};
    fill_random_fp8_e4m3(m.data.ptr, out * in, 448.f, seed++, nullptr);
    const std::vector<float> scales(static_cast<size_t>(out), scale / 448.f);
    L2KV_CUDA_CHECK(cudaMemcpy(m.scale.ptr, scales.data(), scales.size() * sizeof(float),
                               cudaMemcpyHostToDevice));
    return m;
  };
  weights_->embed = random(c.vocab_size * c.hidden_size, scale);
  if (!c.tie_word_embeddings) weights_->lm_head = random(c.vocab_size * c.hidden_size, scale);
  weights_->final_norm = upload_16bit(c.dtype, ones);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    Weights::Layer layer;
    layer.input_norm = upload_16bit(c.dtype, ones);
    layer.post_norm = upload_16bit(c.dtype, ones);
    if (c.fp8_weights) {
      layer.qkv8 = random_fp8(q_dim + 2 * kv_dim, c.hidden_size);
      layer.o8 = random_fp8(c.hidden_size, q_dim);
      layer.gate_up8 = random_fp8(2 * c.intermediate_size, c.hidden_size);
      layer.down8 = random_fp8(c.hidden_size, c.intermediate_size);
    } else {
      layer.qkv = random((q_dim + 2 * kv_dim) * c.hidden_size, scale);
      layer.o = random(c.hidden_size * q_dim, scale);
      layer.gate_up = random(2 * c.intermediate_size * c.hidden_size, scale);  // any order
      layer.down = random(c.hidden_size * c.intermediate_size, scale);
    }
    if (c.qkv_bias) layer.qkv_bias = random(q_dim + 2 * kv_dim, scale);
    if (c.qk_norm) {
      layer.q_norm = upload_16bit(c.dtype, head_ones);
      layer.k_norm = upload_16bit(c.dtype, head_ones);
    }
    weights_->layers.push_back(std::move(layer));
  }
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  init_common();
}

void CudaModel::init_common() {
  const ModelConfig& c = config_;
  if (c.head_dim != 64 && c.head_dim != 128)
    throw Error("CUDA backend: head_dim must be 64 or 128, got " + std::to_string(c.head_dim));
  L2KV_CUDA_CHECK(cudaGetDevice(&device_));
  weight_bytes_ = c.weight_bytes();
  if (c.fp8_weights) {
    const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
    weights_->fp8_widened = DeviceArray<uint16_t>(
        static_cast<size_t>(std::max({(q_dim + 2 * kv_dim) * c.hidden_size, c.hidden_size * q_dim,
                                      2 * c.intermediate_size * c.hidden_size})));
  }
  const std::vector<float> inv = rope_inverse_frequencies(c.rope, c.head_dim);
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&inv_freq_), inv.size() * sizeof(float)));
  L2KV_CUDA_CHECK(
      cudaMemcpy(inv_freq_, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&kv_scales_),
                             static_cast<size_t>(2 * c.num_layers) * sizeof(float)));
  set_calculate_kv_scales(calculate_kv_scales_);
}

void CudaModel::reset_kv_scales() {
  std::vector<float> host;
  for (const Weights::Layer& layer : weights_->layers) {
    host.push_back(layer.k_scale);
    host.push_back(layer.v_scale);
  }
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());  // no step in flight reads them while they change
  L2KV_CUDA_CHECK(
      cudaMemcpy(kv_scales_, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
}

void CudaModel::set_calculate_kv_scales(bool on) {
  calculate_kv_scales_ = on;
  reset_kv_scales();
  kv_scales_pending_ =
      on && std::any_of(weights_->layers.begin(), weights_->layers.end(),
                        [](const Weights::Layer& layer) { return !layer.checkpoint_kv_scales; });
}

std::vector<float> CudaModel::kv_scales() const {
  std::vector<float> host(static_cast<size_t>(2 * config_.num_layers));
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  L2KV_CUDA_CHECK(
      cudaMemcpy(host.data(), kv_scales_, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

CudaModel::~CudaModel() {
  drop_graphs();
  for (void* p : k_pools_) cudaFree(p);
  for (void* p : v_pools_) cudaFree(p);
  if (inv_freq_) cudaFree(inv_freq_);
  if (kv_scales_) cudaFree(kv_scales_);
  for (auto& e : gemm_events_) cudaEventDestroy(e.start), cudaEventDestroy(e.stop);
  for (auto& e : attention_events_) cudaEventDestroy(e.start), cudaEventDestroy(e.stop);
  if (total_events_.start) cudaEventDestroy(total_events_.start);
  if (total_events_.stop) cudaEventDestroy(total_events_.stop);
}

void CudaModel::drop_graphs() {
  for (auto& [size, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

void CudaModel::allocate_workspace(const WorkspaceLimits& limits) {
  const ModelConfig& c = config_;
  if (limits.max_tokens <= 0 || limits.max_seqs <= 0 || limits.max_model_len <= 0)
    throw Error("CUDA backend: workspace limits must be positive");
  drop_graphs();
  limits_ = limits;
  if (limits_.max_logit_rows <= 0) limits_.max_logit_rows = limits_.max_seqs;
  const size_t T = static_cast<size_t>(std::max(limits_.max_tokens, limits_.max_seqs));
  const size_t S = static_cast<size_t>(limits_.max_seqs);
  const size_t H = c.hidden_size, I = c.intermediate_size;
  const size_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  ws_.reset();  // free the old buffers before taking new ones
  auto ws = std::make_unique<Workspace>();
  ws->residual = DeviceArray<float>(T * H);
  ws->sumsq = DeviceArray<float>(2 * static_cast<size_t>(kGemvMaxRows));
  ws->h = DeviceArray<uint16_t>(T * H);
  ws->qkv = DeviceArray<uint16_t>(T * (q_dim + 2 * kv_dim));
  ws->q = DeviceArray<uint16_t>(T * q_dim);
  ws->attn = DeviceArray<uint16_t>(T * q_dim);
  ws->proj = DeviceArray<uint16_t>(T * H);
  ws->gate_up = DeviceArray<uint16_t>(T * 2 * I);
  ws->act = DeviceArray<uint16_t>(T * I);
  ws->last = DeviceArray<uint16_t>(static_cast<size_t>(limits_.max_logit_rows) * H);
  ws->hidden_rows = DeviceArray<uint16_t>(static_cast<size_t>(kMaxHiddenRowLogits) * H);
  ws->logits = DeviceArray<float>(static_cast<size_t>(limits_.max_logit_rows) * c.vocab_size);
  ws->stride = ceil_div(limits_.max_model_len, 16);  // enough for any supported block size
  ws->seq_lens = 0;
  ws->last_rows = ws->seq_lens + static_cast<int64_t>(S);
  ws->ids = ws->last_rows +
            static_cast<int64_t>(std::max(S, static_cast<size_t>(limits_.max_logit_rows)));
  ws->positions = ws->ids + static_cast<int64_t>(T);
  ws->slots = ws->positions + static_cast<int64_t>(T);
  ws->block_table = ws->slots + static_cast<int64_t>(T);
  const size_t meta = static_cast<size_t>(ws->block_table) + S * ws->stride;
  ws->meta = DeviceArray<int32_t>(meta);
  L2KV_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ws->host_meta), meta * 4));
  L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&ws->uploaded, cudaEventDisableTiming));
  ws_ = std::move(ws);
  // Attention work lists and partials, sized here for the largest step: never grown in one.
  prefill_.reserve(static_cast<int32_t>(T), limits_.max_seqs, static_cast<int32_t>(c.num_kv_heads),
                   static_cast<int32_t>(c.num_q_heads));
  if (decode_kernel_ == DecodeKernel::kPagedV1) reserve_paged_v1();
  if (num_blocks_ > 0 && decode_kernel_ == DecodeKernel::kSplit)
    split_.reserve_for_graphs(limits_.max_seqs, decode_params());
}

int64_t CudaModel::streamed_weight_bytes() const {
  const ModelConfig& c = config_;
  return weight_bytes_ -
         (c.tie_word_embeddings ? 0 : c.vocab_size * c.hidden_size * dtype_bytes(c.dtype));
}

void CudaModel::set_kv_storage(KvStorage storage) {
  if (num_blocks_ > 0)
    throw Error("CUDA backend: the KV cache dtype is set before the KV pool is allocated");
  kv_storage_ = storage;
}

int64_t CudaModel::kv_block_bytes(int32_t block_size) const {
  const ModelConfig& c = config_;
  const int64_t element_bytes = kv_storage_ == KvStorage::kFp8E4M3 ? 1 : dtype_bytes(c.dtype);
  return int64_t{2} * c.num_layers * block_size * c.num_kv_heads * c.head_dim * element_bytes;
}

void CudaModel::allocate_kv_cache(int32_t num_blocks, int32_t block_size) {
  if (num_blocks < 2) throw Error("CUDA backend: the KV pool needs at least 2 blocks");
  if (std::find(std::begin(kSupportedBlockSizes), std::end(kSupportedBlockSizes), block_size) ==
      std::end(kSupportedBlockSizes))
    throw Error("CUDA backend: block size " + std::to_string(block_size) +
                " is not supported (16, 32, 64 are)");
  release_kv_cache();
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  const size_t pool_bytes =
      static_cast<size_t>(kv_block_bytes(block_size) / 2 / config_.num_layers);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    void *k = nullptr, *v = nullptr;
    L2KV_CUDA_CHECK(cudaMalloc(&k, pool_bytes * num_blocks));
    k_pools_.push_back(k);
    L2KV_CUDA_CHECK(cudaMalloc(&v, pool_bytes * num_blocks));
    v_pools_.push_back(v);
    // Finite contents everywhere: pad rows attend to block 0 without ever writing it.
    L2KV_CUDA_CHECK(cudaMemset(k, 0, pool_bytes * num_blocks));
    L2KV_CUDA_CHECK(cudaMemset(v, 0, pool_bytes * num_blocks));
  }
  if (ws_ && decode_kernel_ == DecodeKernel::kSplit)
    split_.reserve_for_graphs(limits_.max_seqs, decode_params());
}

void CudaModel::release_kv_cache() {
  drop_graphs();
  for (void* p : k_pools_) L2KV_CUDA_CHECK(cudaFree(p));
  for (void* p : v_pools_) L2KV_CUDA_CHECK(cudaFree(p));
  k_pools_.clear();
  v_pools_.clear();
  num_blocks_ = 0;
}

bool CudaModel::fused_step(int32_t rows) const {
  const ModelConfig& c = config_;
  return fused_layer_ && gate_up_interleaved_ && rows <= gemm_.gemv_max_rows() &&
         rows <= kGemvMaxRows && c.hidden_size % 8 == 0 && (c.num_q_heads * c.head_dim) % 8 == 0 &&
         c.intermediate_size % 8 == 0;
}

void CudaModel::set_fused_layer(bool on) {
  if (on && config_.fp8_weights)
    throw Error(
        "--fused-layer: the five-kernel layer has no fp8 form; fp8 models run nine "
        "kernels per layer");
  if (on == fused_layer_) return;
  drop_graphs();
  fused_layer_ = on;
}

void CudaModel::set_decode_attention(DecodeKernel kernel, const PrefetchPolicy& policy) {
  if (policy.pdl && kernel != DecodeKernel::kSplit)
    throw Error("KV prefetch policy " + to_string(policy) +
                ": +pdl (programmatic dependent launch) needs the split attention kernel");
  drop_graphs();
  decode_kernel_ = kernel;
  prefetch_ = policy;
  // `auto` on the split kernel: no L2 prefetch distance (SplitDecode::prefetch_distance) and a
  // programmatic dependent launch behind the RoPE/KV-write kernel: on an H200 the decode step
  // was 0.4-1.3 % faster at batch 1 and 8 and within 0.2 % at 16 and 64
  // (bench/results/2026-11-27-h200/decode-v2/steady_rope_pdl.json, steady_auto.json).
  if (kernel == DecodeKernel::kSplit && policy.mode == PrefetchMode::kAuto) prefetch_.pdl = true;
  // With PDL the GEMV projections (batches of up to 8 rows) also start behind the norm,
  // attention and SiLU kernels while those finish.
  gemm_.set_programmatic_launch(prefetch_.pdl);
  if (ws_ && num_blocks_ > 0 && kernel == DecodeKernel::kSplit)
    split_.reserve_for_graphs(limits_.max_seqs, decode_params());
  if (ws_ && kernel == DecodeKernel::kPagedV1) reserve_paged_v1();
}

void CudaModel::reserve_paged_v1() {
  // Decode steps pass max_model_len as the length bound (enqueue_forward): beyond 48K tokens
  // paged_v1 runs in partitions, whose partials are sized here for the largest batch.
  paged_v1_.reserve(limits_.max_seqs, static_cast<int32_t>(config_.num_q_heads),
                    static_cast<int32_t>(config_.head_dim), limits_.max_model_len);
}

DecodeAttentionParams CudaModel::decode_params() const {
  const ModelConfig& c = config_;
  DecodeAttentionParams p;
  p.q = ws_->q.ptr;
  p.out = ws_->attn.ptr;
  p.num_q_heads = static_cast<int32_t>(c.num_q_heads);
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(c.head_dim));
  p.max_seq_len = 1;
  p.kv.k_pool = k_pools_.empty() ? nullptr : k_pools_[0];
  p.kv.v_pool = v_pools_.empty() ? nullptr : v_pools_[0];
  p.kv.block_table = ws_->meta.ptr + ws_->block_table;
  p.kv.seq_lens = ws_->meta.ptr + ws_->seq_lens;
  p.kv.num_blocks = num_blocks_;
  p.kv.block_size = block_size_;
  p.kv.num_kv_heads = static_cast<int32_t>(c.num_kv_heads);
  p.kv.head_dim = static_cast<int32_t>(c.head_dim);
  p.kv.batch_size = std::max(1, step_.batch);
  p.kv.max_blocks_per_seq = ceil_div(limits_.max_model_len, block_size_);
  p.kv.layout = KvLayout::kHND;
  p.kv.dtype = c.dtype;
  p.kv.storage = kv_storage_;
  return p;
}

int32_t CudaModel::prepare(std::span<const BatchSequence> batch, int32_t pad_to,
                           cudaStream_t stream) {
  const ModelConfig& c = config_;
  if (!ws_ || num_blocks_ == 0)
    throw Error("CUDA backend: allocate_workspace and allocate_kv_cache come before a step");
  const auto fail = [](const std::string& m) { throw Error("CUDA backend step: " + m); };
  const int32_t seqs = static_cast<int32_t>(batch.size());
  const int32_t batch_rows = std::max(seqs, pad_to);
  if (batch_rows == 0) fail("empty batch");
  if (batch_rows > limits_.max_seqs)
    fail(std::to_string(batch_rows) + " sequences exceed the workspace's " +
         std::to_string(limits_.max_seqs));
  const int32_t table_blocks = ceil_div(limits_.max_model_len, block_size_);
  bool decode_only = true;
  int64_t tokens = 0;
  for (int32_t s = 0; s < seqs; ++s) {
    const BatchSequence& b = batch[s];
    if (b.tokens.empty()) fail("sequence " + std::to_string(s) + " has no tokens");
    const int64_t end = int64_t{b.start_position} + static_cast<int64_t>(b.tokens.size());
    if (b.start_position < 0 || end > limits_.max_model_len)
      fail("sequence " + std::to_string(s) + " reaches position " + std::to_string(end) +
           ", beyond max_model_len " + std::to_string(limits_.max_model_len));
    if (static_cast<int64_t>(b.block_table.size()) < ceil_div(end, block_size_) ||
        static_cast<int32_t>(b.block_table.size()) > table_blocks)
      fail("sequence " + std::to_string(s) + " has " + std::to_string(b.block_table.size()) +
           " blocks for " + std::to_string(end) + " tokens");
    for (int32_t block : b.block_table)
      if (block < 0 || block >= num_blocks_)
        fail("block id " + std::to_string(block) + " outside the pool of " +
             std::to_string(num_blocks_));
    for (int32_t t : b.tokens)
      if (t < 0 || t >= c.vocab_size)
        fail("token id " + std::to_string(t) + " outside the vocabulary of " +
             std::to_string(c.vocab_size));
    decode_only &= b.tokens.size() == 1 && b.wants_logits;
    tokens += static_cast<int64_t>(b.tokens.size());
  }
  if (pad_to > seqs && !decode_only) fail("only decode-only batches are padded");
  const int64_t rows = decode_only ? batch_rows : tokens;
  if (rows > std::max(limits_.max_tokens, limits_.max_seqs))
    fail(std::to_string(rows) + " tokens exceed the workspace's " +
         std::to_string(limits_.max_tokens));

  // The previous upload must have left the staging memory before it is rewritten.
  L2KV_CUDA_CHECK(cudaEventSynchronize(ws_->uploaded));
  int32_t* m = ws_->host_meta;
  int32_t* seq_lens = m + ws_->seq_lens;
  int32_t* last_rows = m + ws_->last_rows;
  int32_t* ids = m + ws_->ids;
  int32_t* positions = m + ws_->positions;
  int32_t* slots = m + ws_->slots;
  int32_t* table = m + ws_->block_table;
  const int32_t stride = ceil_div(limits_.max_model_len, block_size_);
  host_seq_lens_.assign(static_cast<size_t>(batch_rows), 1);
  std::vector<PrefillChunk> chunks;
  int32_t row = 0, logit_rows = 0;
  for (int32_t s = 0; s < batch_rows; ++s) {
    int32_t* table_row = table + static_cast<int64_t>(s) * stride;
    if (s >= seqs) {  // pad row: token 0 at position 0, K/V not kept, attends to block 0
      ids[row] = 0, positions[row] = 0, slots[row] = -1;
      seq_lens[s] = 1;
      table_row[0] = 0;
      last_rows[logit_rows++] = row++;
      continue;
    }
    const BatchSequence& b = batch[s];
    std::copy(b.block_table.begin(), b.block_table.end(), table_row);
    chunks.push_back({s, row, static_cast<int32_t>(b.tokens.size()), b.start_position});
    for (size_t i = 0; i < b.tokens.size(); ++i) {
      const int32_t pos = b.start_position + static_cast<int32_t>(i);
      ids[row] = b.tokens[i];
      positions[row] = pos;
      slots[row] = b.block_table[pos / block_size_] * block_size_ + pos % block_size_;
      ++row;
    }
    seq_lens[s] = b.start_position + static_cast<int32_t>(b.tokens.size());
    host_seq_lens_[s] = seq_lens[s];
    if (b.wants_logits) last_rows[logit_rows++] = row - 1;
  }
  if (logit_rows > limits_.max_logit_rows)
    fail(std::to_string(logit_rows) + " logit rows exceed the workspace's " +
         std::to_string(limits_.max_logit_rows));
  const size_t upload = static_cast<size_t>(ws_->block_table) +
                        static_cast<size_t>(batch_rows) * static_cast<size_t>(stride);
  L2KV_CUDA_CHECK(cudaMemcpyAsync(ws_->meta.ptr, m, upload * 4, cudaMemcpyHostToDevice, stream));
  L2KV_CUDA_CHECK(cudaEventRecord(ws_->uploaded, stream));

  step_ = {row, logit_rows, batch_rows, decode_only, false};
  // The first step with a prompt chunk computes the pending scales before it stores any K/V.
  step_.calculate_kv_scales =
      !decode_only && kv_scales_pending_ && kv_storage_ == KvStorage::kFp8E4M3;
  DecodeAttentionParams p = decode_params();
  if (decode_only) {
    if (decode_kernel_ == DecodeKernel::kSplit) {
      p.max_seq_len = *std::max_element(host_seq_lens_.begin(), host_seq_lens_.end());
      split_.plan(p, host_seq_lens_, stream);  // the same plan serves every layer
    }
  } else {
    prefill_.plan(p.kv, p.num_q_heads, chunks, stream);
  }
  return logit_rows;
}

// The CUDA ops of the decoder graph for the prepared step.
struct CudaModel::GraphOps {
  CudaModel* m = nullptr;
  cudaStream_t stream = nullptr;
  DecodeAttentionParams decode;
  int32_t n = 0;                  // query rows
  bool fused = false;             // the five-kernel layer (CudaModel::fused_step)
  const void* pending = nullptr;  // unfused: the last block's output, added by the next norm

  const ModelConfig& c() const { return m->config_; }
  Workspace& ws() const { return *m->ws_; }
  const Weights::Layer& w(int64_t l) const { return m->weights_->layers[l]; }
  int64_t q_dim() const { return c().num_q_heads * c().head_dim; }
  int64_t kv_dim() const { return c().num_kv_heads * c().head_dim; }
  template <typename F>
  void timed(std::vector<EventPair>& list, F&& launch) {
    if (!m->profiling_) return launch();
    EventPair e{};
    L2KV_CUDA_CHECK(cudaEventCreate(&e.start));
    L2KV_CUDA_CHECK(cudaEventCreate(&e.stop));
    L2KV_CUDA_CHECK(cudaEventRecord(e.start, stream));
    launch();
    L2KV_CUDA_CHECK(cudaEventRecord(e.stop, stream));
    list.push_back(e);
  }
  // A projection's weights [out x in]: 16-bit, or fp8 (with config fp8_weights).
  struct Projection {
    const uint16_t* w16 = nullptr;
    const Fp8Matrix* w8 = nullptr;
    int64_t out = 0, in = 0;
    const void* data() const { return w8 ? static_cast<const void*>(w8->data.ptr) : w16; }
    int64_t bytes() const { return out * in * (w8 ? 1 : 2); }
  };
  Projection qkv(int64_t l) const {
    return fp8_or_16(w(l).qkv, w(l).qkv8, q_dim() + 2 * kv_dim(), c().hidden_size);
  }
  Projection o(int64_t l) const { return fp8_or_16(w(l).o, w(l).o8, c().hidden_size, q_dim()); }
  Projection gate_up(int64_t l) const {
    return fp8_or_16(w(l).gate_up, w(l).gate_up8, 2 * c().intermediate_size, c().hidden_size);
  }
  Projection down(int64_t l) const {
    return fp8_or_16(w(l).down, w(l).down8, c().hidden_size, c().intermediate_size);
  }
  Projection fp8_or_16(const DeviceArray<uint16_t>& w16, const Fp8Matrix& w8, int64_t out,
                       int64_t in) const {
    return {w16.ptr, c().fp8_weights ? &w8 : nullptr, out, in};
  }
  // y[n, out] = x[n, in] W^T.
  void project(const Projection& p, const void* x, void* y) {
    if (p.w8)
      m->gemm_.linear_fp8(c().dtype, x, p.w8->view(), y, n, p.in, p.out,
                          m->weights_->fp8_widened.ptr, stream);
    else
      m->gemm_.linear(c().dtype, x, p.w16, y, n, p.in, p.out, stream);
  }
  void norm(const void* weight) {
    ops::add_rmsnorm(c().dtype, ws().residual.ptr, pending, weight,
                     static_cast<float>(c().rms_norm_eps), n, static_cast<int32_t>(c().hidden_size),
                     ws().h.ptr, stream, m->prefetch_.pdl);
    pending = nullptr;
  }
  float* sumsq(int i) const { return ws().sumsq.ptr + i * kGemvMaxRows; }
  // The fused layer's RMSNorm prologue over the residual stream, its sums of squares in
  // sumsq(read); it clears sumsq(clear) for the residual epilogue after it.
  GemvFusion norm_prologue(const void* weight, int read, int clear) const {
    GemvFusion f;
    f.norm_residual = ws().residual.ptr;
    f.norm_weight = weight;
    f.norm_sumsq = sumsq(read);
    f.clear_sumsq = sumsq(clear);
    f.eps = static_cast<float>(c().rms_norm_eps);
    return f;
  }
  // residual += the projection; its new sums of squares accumulate in sumsq(accumulate).
  GemvFusion residual_epilogue(int accumulate) const {
    GemvFusion f;
    f.epilogue = GemvEpilogue::kResidualAdd;
    f.residual = ws().residual.ptr;
    f.residual_sumsq = sumsq(accumulate);
    return f;
  }

  void embed_tokens() {
    ops::embed(c().dtype, ws().meta.ptr + ws().ids, n, m->weights_->embed.ptr,
               static_cast<int32_t>(c().hidden_size), ws().residual.ptr, stream,
               fused ? sumsq(0) : nullptr);
  }
  void norm_qkv_rope(int64_t l) {
    const int64_t qkv_out = q_dim() + 2 * kv_dim();
    if (!fused) norm(w(l).input_norm.ptr);
    timed(m->gemm_events_, [&] {
      if (fused)
        m->gemm_.linear_fused(c().dtype, nullptr, w(l).qkv.ptr, ws().qkv.ptr, n, c().hidden_size,
                              qkv_out, norm_prologue(w(l).input_norm.ptr, 0, 1), stream);
      else
        project(qkv(l), ws().h.ptr, ws().qkv.ptr);
    });
    rope_and_append_kv(l);
  }
  void rope_and_append_kv(int64_t l) {
    decode.kv.k_pool = m->k_pools_[l];
    decode.kv.v_pool = m->v_pools_[l];
    decode.kv.k_scale = w(l).k_scale;
    decode.kv.v_scale = w(l).v_scale;
    decode.kv.device_scales = m->kv_scales_ + 2 * l;
    const ops::QkNorm qk_norm{w(l).q_norm.ptr, w(l).k_norm.ptr,
                              static_cast<float>(c().rms_norm_eps)};  // null pointers: none
    if (m->step_.calculate_kv_scales && !w(l).checkpoint_kv_scales)
      ops::calculate_kv_scales(ws().qkv.ptr, w(l).qkv_bias.ptr, ws().meta.ptr + ws().positions,
                               ws().meta.ptr + ws().slots, m->inv_freq_, n,
                               static_cast<int32_t>(c().num_q_heads), decode.kv,
                               m->kv_scales_ + 2 * l, stream, qk_norm);
    ops::rope_and_cache(ws().qkv.ptr, w(l).qkv_bias.ptr, ws().meta.ptr + ws().positions,
                        ws().meta.ptr + ws().slots, m->inv_freq_, n,
                        static_cast<int32_t>(c().num_q_heads), decode.kv, ws().q.ptr, stream,
                        m->prefetch_.pdl, qk_norm);
  }
  void attention(int64_t) {
    timed(m->attention_events_, [&] {
      if (!m->step_.decode_only)
        m->prefill_.run(ws().q.ptr, ws().attn.ptr, decode.kv, decode.num_q_heads,
                        decode.softmax_scale, stream);
      else if (m->decode_kernel_ == DecodeKernel::kSplit)
        m->split_.run(decode, m->prefetch_, stream);
      else
        m->paged_v1_.run(decode, m->prefetch_, stream);
    });
  }
  void output_projection_add(int64_t l) {
    timed(m->gemm_events_, [&] {
      if (fused)
        m->gemm_.linear_fused(c().dtype, ws().attn.ptr, w(l).o.ptr, nullptr, n, q_dim(),
                              c().hidden_size, residual_epilogue(1), stream);
      else
        project(o(l), ws().attn.ptr, ws().proj.ptr);
    });
    if (!fused) pending = ws().proj.ptr;  // added by the next norm
  }
  // One row: gate_up with SiLU x up in the GEMV's epilogue instead of cuBLASLt and silu_mul.
  // Measured on an H200 (bench/NOTES.md, "The GEMV's weights in a shared-memory ring"): 2 %
  // faster steps at batch 1, 3 % slower at 4 and 8, 7 % at 16.
  static constexpr int32_t kGateUpGemvMaxRows = 1;
  bool gate_up_silu_on_gemv() const {
    return n <= kGateUpGemvMaxRows && m->gate_up_interleaved_ && !c().fp8_weights;
  }
  void norm_gate_up_silu(int64_t l) {
    const int64_t H = c().hidden_size, I = c().intermediate_size;
    if (fused) {
      GemvFusion f = norm_prologue(w(l).post_norm.ptr, 1, 0);
      f.epilogue = GemvEpilogue::kSiluMul;
      timed(m->gemm_events_, [&] {
        m->gemm_.linear_fused(c().dtype, nullptr, w(l).gate_up.ptr, ws().act.ptr, n, H, 2 * I, f,
                              stream);
      });
      return;
    }
    norm(w(l).post_norm.ptr);
    if (gate_up_silu_on_gemv()) {
      GemvFusion f;
      f.epilogue = GemvEpilogue::kSiluMul;
      timed(m->gemm_events_, [&] {
        m->gemm_.linear_fused(c().dtype, ws().h.ptr, w(l).gate_up.ptr, ws().act.ptr, n, H, 2 * I, f,
                              stream);
      });
      return;
    }
    timed(m->gemm_events_, [&] { project(gate_up(l), ws().h.ptr, ws().gate_up.ptr); });
    ops::silu_mul(c().dtype, ws().gate_up.ptr, n, static_cast<int32_t>(I), ws().act.ptr, stream,
                  m->prefetch_.pdl, m->gate_up_interleaved_);
  }
  void down_projection_add(int64_t l) {
    const int64_t H = c().hidden_size, I = c().intermediate_size;
    timed(m->gemm_events_, [&] {
      if (fused)
        m->gemm_.linear_fused(c().dtype, ws().act.ptr, w(l).down.ptr, nullptr, n, I, H,
                              residual_epilogue(0), stream);
      else
        project(down(l), ws().act.ptr, ws().proj.ptr);
    });
    if (!fused) pending = ws().proj.ptr;
  }
  void final_norm() { norm(m->weights_->final_norm.ptr); }
  void lm_head() {
    const int64_t H = c().hidden_size;
    const PreparedStep& step = m->step_;
    // Decode rows all want logits, in order: the LM head reads h directly.
    const bool direct = step.decode_only || step.all_logits;
    const int32_t rows = step.all_logits ? n : step.logit_rows;
    if (rows == 0) return;  // a prompt chunk that samples nothing
    if (!direct)
      ops::gather_rows(ws().h.ptr, ws().meta.ptr + ws().last_rows, rows, static_cast<int32_t>(H),
                       ws().last.ptr, stream);
    timed(m->gemm_events_, [&] {
      m->gemm_.linear_f32_out(c().dtype, direct ? ws().h.ptr : ws().last.ptr,
                              m->weights_->lm_head_ptr(), ws().logits.ptr, rows, H, c().vocab_size,
                              stream);
    });
  }
};

void CudaModel::enqueue_forward(cudaStream_t stream) {
  GraphOps g;
  g.m = this;
  g.stream = stream;
  g.decode = decode_params();
  if (decode_kernel_ == DecodeKernel::kPagedV1)  // one launch (and graph) for every length
    g.decode.max_seq_len = limits_.max_model_len;
  g.n = step_.rows;
  g.fused = fused_step(g.n);
  run_decoder_graph(g, config_.num_layers);
  if (step_.calculate_kv_scales) kv_scales_pending_ = false;  // fixed from now on
}

void CudaModel::forward(cudaStream_t stream) {
  if (step_.rows == 0) throw Error("CUDA backend: forward() without a prepared step");
  if (step_.decode_only && use_graphs_ && !profiling_) {
    const auto it = graphs_.find(step_.batch);
    if (it != graphs_.end()) {
      L2KV_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
      return;
    }
  }
  if (profiling_) {
    for (auto& e : gemm_events_) cudaEventDestroy(e.start), cudaEventDestroy(e.stop);
    for (auto& e : attention_events_) cudaEventDestroy(e.start), cudaEventDestroy(e.stop);
    gemm_events_.clear();
    attention_events_.clear();
    if (!total_events_.start) {
      L2KV_CUDA_CHECK(cudaEventCreate(&total_events_.start));
      L2KV_CUDA_CHECK(cudaEventCreate(&total_events_.stop));
    }
    L2KV_CUDA_CHECK(cudaEventRecord(total_events_.start, stream));
  }
  enqueue_forward(stream);
  if (profiling_) L2KV_CUDA_CHECK(cudaEventRecord(total_events_.stop, stream));
}

const float* CudaModel::logits() const {
  return ws_ ? ws_->logits.ptr : nullptr;
}

void CudaModel::hidden_row_logits(int32_t first_row, int32_t rows, float* out,
                                  cudaStream_t stream) {
  if (!ws_ || step_.rows == 0)
    throw Error("CUDA backend: hidden_row_logits() needs a prepared and enqueued step");
  if (rows < 1 || rows > kMaxHiddenRowLogits || first_row < 0 || first_row > step_.rows - rows)
    throw Error("CUDA backend: hidden rows " + std::to_string(first_row) + " + " +
                std::to_string(rows) + " outside the step's " + std::to_string(step_.rows) +
                " rows (at most " + std::to_string(kMaxHiddenRowLogits) + " at once)");
  if (out == nullptr) throw Error("CUDA backend: hidden_row_logits() into a null buffer");
  const int64_t H = config_.hidden_size;
  // Copied to the start of a buffer, as lm_head() gathers them: the LM head's GEMM plans are
  // chosen per shape on aligned operands, and a row of h may start at any multiple of H.
  L2KV_CUDA_CHECK(cudaMemcpyAsync(ws_->hidden_rows.ptr, ws_->h.ptr + int64_t{first_row} * H,
                                  static_cast<size_t>(int64_t{rows} * H) * sizeof(uint16_t),
                                  cudaMemcpyDeviceToDevice, stream));
  gemm_.linear_f32_out(config_.dtype, ws_->hidden_rows.ptr, weights_->lm_head_ptr(), out, rows, H,
                       config_.vocab_size, stream);
}

int32_t CudaModel::graph_bucket(int32_t rows) const {
  const auto it = graphs_.lower_bound(rows);
  return it == graphs_.end() ? 0 : it->first;
}

void CudaModel::capture_decode_graphs(std::span<const int32_t> batch_sizes, cudaStream_t stream) {
  if (stream == nullptr) throw Error("CUDA backend: graphs are captured on a created stream");
  const bool was_profiling = profiling_;
  profiling_ = false;
  for (int32_t size : batch_sizes) {
    if (size <= 0 || size > limits_.max_seqs)
      throw Error("CUDA backend: graph batch size " + std::to_string(size) + " outside 1.." +
                  std::to_string(limits_.max_seqs));
    if (graphs_.count(size)) continue;
    prepare({}, size, stream);
    enqueue_forward(stream);  // eager first: GEMM plans and kernel attributes are set up here
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    L2KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue_forward(stream);
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    L2KV_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    L2KV_CUDA_CHECK(status);
    graphs_[size] = exec;
  }
  profiling_ = was_profiling;
  step_ = {};
}

std::vector<float> CudaModel::run(std::span<const BatchSequence> batch, bool all_logits,
                                  cudaStream_t stream) {
  prepare(batch, 0, stream);
  if (all_logits) {
    if (step_.rows > limits_.max_logit_rows)
      throw Error("CUDA backend: " + std::to_string(step_.rows) +
                  " rows of logits exceed the workspace's " +
                  std::to_string(limits_.max_logit_rows));
    if (step_.decode_only) {  // every row's logits come from the eager prefill path
      std::vector<PrefillChunk> chunks;
      for (size_t s = 0; s < batch.size(); ++s)
        chunks.push_back(
            {static_cast<int32_t>(s), static_cast<int32_t>(s), 1, batch[s].start_position});
      const DecodeAttentionParams p = decode_params();
      prefill_.plan(p.kv, p.num_q_heads, chunks, stream);
    }
    step_.all_logits = true;
    step_.decode_only = false;
  }
  forward(stream);
  const int32_t rows = step_.all_logits ? step_.rows : step_.logit_rows;
  std::vector<float> out(static_cast<size_t>(rows) * config_.vocab_size);
  L2KV_CUDA_CHECK(cudaMemcpyAsync(out.data(), ws_->logits.ptr, out.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  step_ = {};
  return out;
}

CudaModel::OpTimes CudaModel::last_op_times() {
  OpTimes t;
  auto sum = [](const std::vector<EventPair>& list) {
    double total = 0;
    for (const auto& e : list) {
      float ms = 0;
      L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, e.start, e.stop));
      total += ms;
    }
    return total;
  };
  t.gemm_ms = sum(gemm_events_);
  t.attention_ms = sum(attention_events_);
  if (total_events_.start) {
    float ms = 0;
    L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, total_events_.start, total_events_.stop));
    t.total_ms = ms;
  }
  return t;
}

}  // namespace l2kv
