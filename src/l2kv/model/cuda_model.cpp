#include "l2kv/model/cuda_model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/model/moe.h"
#include "l2kv/kernels/model/paired_rows.h"
#include "l2kv/kernels/random_fill.h"
#include "l2kv/model/decoder_graph.h"
#include "l2kv/model/hf_weights.h"
#include "l2kv/model/safetensors.h"
#include "l2kv/parallel/device_communicator.h"

namespace l2kv {
namespace {

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

// The CUDA kernels are built for these head sizes (and the QKV rows' paired order needs a
// multiple of 16); checked before any weight is loaded.
void check_head_dim(const ModelConfig& c) {
  if (c.head_dim != 64 && c.head_dim != 128 && c.head_dim != 256)
    throw Error("CUDA backend: head_dim must be 64, 128 or 256, got " + std::to_string(c.head_dim));
  if (c.attn_logit_softcapping > 0)
    throw Error(
        "CUDA backend: attention logit soft-capping (attn_logit_softcapping) is not "
        "supported (--device cpu supports it)");
}

// A mixture of experts within what the router and the expert GEMV take, in 16 bits (an fp8
// checkpoint's experts are widened at load).
void check_moe(const ModelConfig& c) {
  if (c.num_experts == 0) return;
  if (c.num_experts > ops::kMoeMaxExperts || c.experts_per_token < 1 ||
      c.experts_per_token > c.num_experts || c.experts_per_token > ops::kMoeMaxTopK ||
      c.expert_intermediate_size % 8 != 0 || c.hidden_size % 8 != 0)
    throw Error("CUDA backend: a mixture of " + std::to_string(c.num_experts) + " experts (top " +
                std::to_string(c.experts_per_token) + ", expert intermediate size " +
                std::to_string(c.expert_intermediate_size) + ", hidden " +
                std::to_string(c.hidden_size) + ") is outside what its kernels take (at most " +
                std::to_string(ops::kMoeMaxExperts) + " experts, top " +
                std::to_string(ops::kMoeMaxTopK) + "; sizes multiples of 8)");
}

// fp8 projections stacked by rows (QKV: q, k, v; gate_up: gate, up) in paired order
// (paired_rows.h) in groups of `group` rows, each row's scale with it.
HfFp8Projection fp8_paired_rows(std::initializer_list<const HfFp8Projection*> parts,
                                int64_t group) {
  HfFp8Projection rows;
  for (const HfFp8Projection* p : parts) {
    rows.codes.insert(rows.codes.end(), p->codes.begin(), p->codes.end());
    rows.row_scales.insert(rows.row_scales.end(), p->row_scales.begin(), p->row_scales.end());
  }
  const auto width = static_cast<int64_t>(rows.codes.size() / rows.row_scales.size());
  rows.codes = to_paired_rows(rows.codes, group, width);
  rows.row_scales = to_paired_rows(rows.row_scales, group, 1);
  return rows;
}

}  // namespace

struct CudaModel::Weights {
  struct Layer {
    // 16-bit projections, or with config fp8_weights the *8 ones (qkv etc. then stay empty).
    DeviceArray<uint16_t> input_norm, post_norm, qkv, qkv_bias, o, gate_up, down;
    Fp8Matrix qkv8, o8, gate_up8, down8;
    DeviceArray<uint16_t> q_norm, k_norm;  // [head_dim] each, with qk_norm (Qwen3)
    // Gemma 3: the norms of the attention's and the MLP's outputs before the residual adds.
    DeviceArray<uint16_t> attention_out_norm, mlp_out_norm;
    // A mixture of experts (gate_up and down then stay empty): the router [experts, hidden],
    // every expert's [gate | up] rows [experts][2 I_e][hidden] and down [experts][hidden][I_e].
    DeviceArray<uint16_t> router, experts_gate_up, experts_down;
    float k_scale = 1.f, v_scale = 1.f;  // fp8 KV cache
    bool checkpoint_kv_scales = false;   // else calculated from the first prompt when on
  };
  DeviceArray<uint16_t> embed, lm_head, final_norm;
  std::vector<Layer> layers;
  // Tied embeddings: the LM head's rows are the embedding's from this row on (a
  // tensor-parallel rank's part of the vocabulary), else 0.
  int64_t tied_first_row = 0;
  int64_t hidden = 0;
  const uint16_t* lm_head_ptr() const {
    return lm_head.ptr ? lm_head.ptr : embed.ptr + tied_first_row * hidden;
  }
  // fp8 models: a projection widened to 16 bits for products of more rows than the fp8 GEMV
  // takes (prompts), as large as the largest projection.
  DeviceArray<uint16_t> fp8_widened;
};

CudaModel::CudaModel(const std::filesystem::path& folder) : CudaModel(folder, nullptr) {}

CudaModel::CudaModel(const std::filesystem::path& folder, DeviceCommunicator& comm)
    : CudaModel(folder, &comm) {}

CudaModel::CudaModel(const ModelConfig& config, uint64_t seed) : CudaModel(config, seed, nullptr) {}

CudaModel::CudaModel(const ModelConfig& config, uint64_t seed, DeviceCommunicator& comm)
    : CudaModel(config, seed, &comm) {}

void CudaModel::init_shard() {
  const ModelConfig& w = whole_config_;
  config_ = w;
  shard_ = TpShard{};
  shard_.q_heads = w.num_q_heads, shard_.kv_heads = w.num_kv_heads;
  shard_.inter = w.intermediate_size, shard_.vocab = w.vocab_size;
  if (comm_ != nullptr) {
    int device = 0;
    L2KV_CUDA_CHECK(cudaGetDevice(&device));
    if (device != comm_->device())
      throw Error("CUDA backend: tensor-parallel rank " + std::to_string(comm_->rank()) +
                  " is made on its communicator's device (cuda:" + std::to_string(comm_->device()) +
                  "), not cuda:" + std::to_string(device));
    shard_ = tp_shard(w, comm_->rank(), comm_->size());
    config_.num_q_heads = shard_.q_heads;
    config_.num_kv_heads = shard_.kv_heads;
    config_.intermediate_size = shard_.inter;
  }
  check_moe(config_);
  check_head_dim(config_);
  weights_->hidden = config_.hidden_size;
  if (config_.tie_word_embeddings) weights_->tied_first_row = shard_.vocab_begin;
}

CudaModel::CudaModel(const std::filesystem::path& folder, DeviceCommunicator* comm)
    : whole_config_(ModelConfig::from_folder(folder)),
      comm_(comm),
      weights_(std::make_unique<Weights>()) {
  init_shard();
  const ModelConfig& c = config_;
  const TpShard* slices = comm_ != nullptr ? &shard_ : nullptr;
  const Checkpoint ckpt(folder);
  auto concat = [](std::vector<float> a, const std::vector<float>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  gate_up_interleaved_ = c.intermediate_size % 8 == 0;
  // gate_up's rows: [gate | up] in paired order (one group: each feature's gate and up rows 8
  // apart, the SiLU epilogue's layout) where the intermediate size allows it, else as they are.
  auto gate_up_rows = [&](const std::vector<float>& gate, const std::vector<float>& up,
                          int64_t hidden) {
    if (!gate_up_interleaved_) return concat(gate, up);
    return to_paired_rows(concat(gate, up), 2 * c.intermediate_size, hidden);
  };
  {
    const HfGlobalWeights globals = load_hf_global_weights(ckpt, whole_config_, slices);
    weights_->embed = upload_16bit(c.dtype, globals.embed);
    // A tied LM head reads the embedding's rows (a rank's copy of them is not kept).
    if (!c.tie_word_embeddings) weights_->lm_head = upload_16bit(c.dtype, globals.lm_head);
    weights_->final_norm = upload_16bit(c.dtype, globals.final_norm);
  }
  // fp8 gate/up rows in the same order as 16-bit ones.
  auto gate_up_fp8 = [&](const HfFp8Projection& gate, const HfFp8Projection& up) {
    if (!gate_up_interleaved_) return upload_fp8({&gate, &up});
    const HfFp8Projection rows = fp8_paired_rows({&gate, &up}, 2 * c.intermediate_size);
    return upload_fp8({&rows});
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const HfLayerWeights w = load_hf_layer_weights(
        ckpt, whole_config_, l,
        c.fp8_weights ? Fp8Projections::kAsStored : Fp8Projections::kDequantized, slices);
    Weights::Layer layer;
    layer.input_norm = upload_16bit(c.dtype, w.input_norm);
    // post_norm is the norm before the MLP (Gemma: pre_feedforward_layernorm; its
    // post_attention_layernorm normalizes the attention's output instead).
    layer.post_norm =
        upload_16bit(c.dtype, c.gemma ? w.pre_feedforward_norm : w.post_attention_norm);
    if (c.gemma) {
      layer.attention_out_norm = upload_16bit(c.dtype, w.post_attention_norm);
      layer.mlp_out_norm = upload_16bit(c.dtype, w.post_feedforward_norm);
    }
    if (c.fp8_weights) {
      const HfFp8Projection qkv = fp8_paired_rows({&w.q8, &w.k8, &w.v8}, c.head_dim);
      layer.qkv8 = upload_fp8({&qkv});
      layer.o8 = upload_fp8({&w.o8});
      if (c.num_experts == 0) {
        layer.gate_up8 = gate_up_fp8(w.gate8, w.up8);
        layer.down8 = upload_fp8({&w.down8});
      }
    } else {
      // One fused projection, its rows in paired order (each head a group: RoPE's pairs).
      layer.qkv = upload_16bit(
          c.dtype, to_paired_rows(concat(concat(w.q, w.k), w.v), c.head_dim, c.hidden_size));
      layer.o = upload_16bit(c.dtype, w.o);
      if (c.num_experts == 0) {
        layer.gate_up = upload_16bit(c.dtype, gate_up_rows(w.gate, w.up, c.hidden_size));
        layer.down = upload_16bit(c.dtype, w.down);
      }
    }
    // Experts in 16 bits, also from an fp8 checkpoint (hf_weights.h dequantized them).
    if (c.num_experts > 0) {
      layer.router = upload_16bit(c.dtype, w.router);
      std::vector<float> gate_up, down;
      for (int64_t e = 0; e < c.num_experts; ++e) {
        gate_up = concat(concat(std::move(gate_up), w.expert_gate[e]), w.expert_up[e]);
        down = concat(std::move(down), w.expert_down[e]);
      }
      layer.experts_gate_up = upload_16bit(c.dtype, gate_up);
      layer.experts_down = upload_16bit(c.dtype, down);
    }
    if (c.qkv_bias)
      layer.qkv_bias = upload_16bit(
          c.dtype, to_paired_rows(concat(concat(w.q_bias, w.k_bias), w.v_bias), c.head_dim, 1));
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

CudaModel::CudaModel(const ModelConfig& config, uint64_t seed, DeviceCommunicator* comm)
    : whole_config_(config), comm_(comm), weights_(std::make_unique<Weights>()) {
  init_shard();
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
  weights_->embed = random(c.vocab_size * c.hidden_size, scale);  // the same on every rank
  // Each rank's slices its own random weights.
  if (comm_ != nullptr) seed += uint64_t{1000003} * static_cast<uint64_t>(comm_->rank());
  if (!c.tie_word_embeddings) weights_->lm_head = random(shard_.vocab * c.hidden_size, scale);
  weights_->final_norm = upload_16bit(c.dtype, ones);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    Weights::Layer layer;
    layer.input_norm = upload_16bit(c.dtype, ones);
    layer.post_norm = upload_16bit(c.dtype, ones);
    if (c.gemma) {
      layer.attention_out_norm = upload_16bit(c.dtype, ones);
      layer.mlp_out_norm = upload_16bit(c.dtype, ones);
    }
    if (c.fp8_weights) {
      layer.qkv8 = random_fp8(q_dim + 2 * kv_dim, c.hidden_size);
      layer.o8 = random_fp8(c.hidden_size, q_dim);
      if (c.num_experts == 0) {
        layer.gate_up8 = random_fp8(2 * c.intermediate_size, c.hidden_size);
        layer.down8 = random_fp8(c.hidden_size, c.intermediate_size);
      }
    } else {
      layer.qkv = random((q_dim + 2 * kv_dim) * c.hidden_size, scale);  // any row order
      layer.o = random(c.hidden_size * q_dim, scale);
      if (c.num_experts == 0) {
        layer.gate_up = random(2 * c.intermediate_size * c.hidden_size, scale);  // any order
        layer.down = random(c.hidden_size * c.intermediate_size, scale);
      }
    }
    if (c.num_experts > 0) {  // 16-bit experts, as an fp8 checkpoint's are widened at load
      const int64_t expert = c.expert_intermediate_size * c.hidden_size;
      layer.router = random(c.num_experts * c.hidden_size, scale);
      layer.experts_gate_up = random(c.num_experts * 2 * expert, scale);
      layer.experts_down = random(c.num_experts * expert, scale);
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
  L2KV_CUDA_CHECK(cudaGetDevice(&device_));
  // No tuning may free memory while other ranks' collectives spin (Gemm::reserve_tuning_flush).
  if (comm_ != nullptr) gemm_.reserve_tuning_flush();
  weight_bytes_ = c.weight_bytes();  // the vocabulary is whole in c: a rank keeps its LM-head rows
  if (!c.tie_word_embeddings)
    weight_bytes_ -= (c.vocab_size - shard_.vocab) * c.hidden_size * dtype_bytes(c.dtype);
  if (c.fp8_weights) {
    const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
    weights_->fp8_widened = DeviceArray<uint16_t>(static_cast<size_t>(
        std::max({(q_dim + 2 * kv_dim) * c.hidden_size, c.hidden_size * q_dim,
                  c.num_experts > 0 ? 0 : 2 * c.intermediate_size * c.hidden_size})));
  }
  auto upload = [](const std::vector<float>& inv) {
    float* d = nullptr;
    L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&d), inv.size() * sizeof(float)));
    L2KV_CUDA_CHECK(cudaMemcpy(d, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice));
    return d;
  };
  inv_freq_ = upload(rope_inverse_frequencies(c.rope, c.head_dim));
  if (!c.sliding_layer.empty())
    local_inv_freq_ = upload(rope_inverse_frequencies(c.local_rope, c.head_dim));
}

CudaModel::~CudaModel() {
  if (inv_freq_) cudaFree(inv_freq_);
  if (local_inv_freq_) cudaFree(local_inv_freq_);
}

int64_t CudaModel::streamed_weight_bytes() const {
  const ModelConfig& c = config_;
  const int64_t row = c.hidden_size * dtype_bytes(c.dtype);
  // Untied: all but the embedding table; tied: all but the embedding rows outside the LM head's.
  return weight_bytes_ - (c.tie_word_embeddings ? c.vocab_size - shard_.vocab : c.vocab_size) * row;
}

int64_t CudaModel::kv_block_bytes(KvStorage storage, int32_t block_size) const {
  const ModelConfig& c = config_;
  const int64_t element_bytes = storage == KvStorage::kFp8E4M3 ? 1 : dtype_bytes(c.dtype);
  return int64_t{2} * c.num_layers * block_size * c.num_kv_heads * c.head_dim * element_bytes;
}

std::vector<float> CudaModel::checkpoint_kv_scales() const {
  std::vector<float> host;
  for (const Weights::Layer& layer : weights_->layers) {
    host.push_back(layer.k_scale);
    host.push_back(layer.v_scale);
  }
  return host;
}

bool CudaModel::missing_checkpoint_kv_scales() const {
  return std::any_of(weights_->layers.begin(), weights_->layers.end(),
                     [](const Weights::Layer& layer) { return !layer.checkpoint_kv_scales; });
}

std::unique_ptr<CudaActivations> CudaModel::allocate_activations(int32_t rows,
                                                                 int32_t logit_rows) const {
  const ModelConfig& c = config_;
  const size_t T = static_cast<size_t>(rows);
  const size_t H = c.hidden_size, I = c.intermediate_size;
  const size_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  auto a = std::make_unique<CudaActivations>();
  a->residual = DeviceArray<float>(T * H);
  a->sumsq = DeviceArray<RowSumsq>(2 * static_cast<size_t>(kGemvMaxRows));
  a->h = DeviceArray<uint16_t>(T * H);
  a->qkv = DeviceArray<uint16_t>(T * (q_dim + 2 * kv_dim));
  a->q = DeviceArray<uint16_t>(T * q_dim);
  a->attn = DeviceArray<uint16_t>(T * q_dim);
  a->proj = DeviceArray<uint16_t>(T * H);
  const size_t slots = T * static_cast<size_t>(c.experts_per_token);
  const size_t I_e = static_cast<size_t>(c.expert_intermediate_size);
  a->gate_up = DeviceArray<uint16_t>(std::max(T * 2 * I, slots * 2 * I_e));
  a->act = DeviceArray<uint16_t>(std::max(T * I, slots * I_e));
  if (c.num_experts == 0 && has_weighted_x_rows_form())
    a->gate_up_f32 = DeviceArray<float>(std::min(T, static_cast<size_t>(kGemvMaxRows)) * 2 * I);
  if (c.num_experts > 0) {
    a->router_logits = DeviceArray<float>(T * static_cast<size_t>(c.num_experts));
    a->moe_weights = DeviceArray<float>(slots);
    a->moe_experts = DeviceArray<int32_t>(slots);
    a->moe_slot_rows = DeviceArray<int32_t>(slots);
    a->moe_first = DeviceArray<int32_t>(static_cast<size_t>(c.num_experts) + 1);
    a->moe_active = DeviceArray<int32_t>(static_cast<size_t>(c.num_experts) + 1);
    a->moe_x_rows = DeviceArray<int32_t>(slots);
    a->moe_x = DeviceArray<uint16_t>(slots * H);
    a->moe_y = DeviceArray<uint16_t>(slots * H);
  }
  if (c.fp8_weights) {
    a->fp8_codes = DeviceArray<uint8_t>(T * std::max({H, q_dim, I}));
    a->fp8_row_scales = DeviceArray<float>(T);
    a->fp8_product =
        DeviceArray<float>(std::min<size_t>(T, Gemm::kFp8ScaledAfterMaxRows) *
                           std::max({q_dim + 2 * kv_dim, H, c.num_experts > 0 ? 0 : 2 * I}));
  }
  a->last = DeviceArray<uint16_t>(static_cast<size_t>(logit_rows) * H);
  a->hidden_rows = DeviceArray<uint16_t>(static_cast<size_t>(kMaxHiddenRowLogits) * H);
  // Tensor-parallel ranks other than 0 write their logits into logits_part only.
  a->logits =
      DeviceArray<float>(shard_.rank == 0 ? static_cast<size_t>(logit_rows) * c.vocab_size : 1);
  if (comm_ != nullptr) {  // LM-head rows of a step or of hidden_row_logits, whichever are more
    const size_t part =
        static_cast<size_t>(std::max(logit_rows, kMaxHiddenRowLogits)) * logit_part_stride();
    a->logits_part = DeviceArray<float>(part);
    if (shard_.rank == 0) a->logits_gathered = DeviceArray<float>(part * shard_.size);
  }
  return a;
}

int64_t CudaModel::logit_part_stride() const {
  const int64_t largest = (config_.vocab_size + shard_.size - 1) / shard_.size;
  return (largest + 3) / 4 * 4;
}

void CudaModel::complete_logits(CudaActivations& a, int32_t rows, float* whole,
                                cudaStream_t stream) const {
  if (comm_ != nullptr) gather_logits(a, rows, whole, stream);
  if (shard_.rank == 0) cap_logits(whole, rows, stream);
}

void CudaModel::gather_logits(CudaActivations& a, int32_t rows, float* whole,
                              cudaStream_t stream) const {
  const int64_t stride = logit_part_stride();
  const int64_t part_floats = int64_t{rows} * stride;
  comm_->gather_to_first(a.logits_part.ptr, a.logits_gathered.ptr,
                         part_floats * static_cast<int64_t>(sizeof(float)), stream);
  if (shard_.rank != 0) return;
  // Rank r's rows [rows, its vocabulary] become columns vocab_begin.. of the whole rows.
  const size_t pitch = static_cast<size_t>(config_.vocab_size) * sizeof(float);
  for (int32_t r = 0; r < shard_.size; ++r) {
    const TpShard s = tp_shard(whole_config_, r, shard_.size);
    const size_t width = static_cast<size_t>(s.vocab) * sizeof(float);
    L2KV_CUDA_CHECK(cudaMemcpy2DAsync(whole + s.vocab_begin, pitch,
                                      a.logits_gathered.ptr + r * part_floats, width, width,
                                      static_cast<size_t>(rows), cudaMemcpyDeviceToDevice, stream));
  }
}

bool CudaModel::can_fuse_layer(int32_t rows) const {
  const ModelConfig& c = config_;
  // Gemma's extra norms and GeGLU have no fused form. The GEMV reads rows of 16-byte vectors:
  // 8 16-bit weights or 16 fp8 ones.
  const int64_t k = c.fp8_weights ? 16 : 8;
  return comm_ == nullptr && c.num_experts == 0 && !c.gemma && gate_up_interleaved_ &&
         rows <= gemm_.gemv_max_rows() && rows <= kGemvMaxRows && c.hidden_size % k == 0 &&
         (c.num_q_heads * c.head_dim) % k == 0 && c.intermediate_size % k == 0;
}

bool CudaModel::has_weighted_x_rows_form() const {
  return config_.dtype == DType::kBFloat16 && !config_.fp8_weights;
}

int32_t CudaModel::default_fused_layer_max_rows() const {
  return has_weighted_x_rows_form() ? static_cast<int32_t>(kGemvMaxRows) : 1;
}

bool CudaModel::can_capture_rows(int32_t rows) const {
  const ModelConfig& c = config_;
  if (c.num_experts == 0) return true;
  // The GEMV's FMAs catch up with its weight stream at a few slots per expert, where a few
  // large experts (Mixtral's 352 MB) run better on cuBLASLt; with many small ones (Qwen3-MoE's
  // 128 of 9.4 MB) a cuBLASLt launch per expert costs more (bench/NOTES.md).
  const int64_t per_expert =
      c.num_experts >= kMoeManyExperts ? kMoeGemvSlotsPerExpert : kMoeGemvSlotsPerLargeExpert;
  return int64_t{rows} * c.experts_per_token <= per_expert * c.num_experts;
}

int64_t CudaModel::step_weight_bytes(int32_t batch) const {
  const ModelConfig& c = config_;
  if (c.num_experts == 0) return streamed_weight_bytes();
  const int64_t expert_bytes =
      3 * c.hidden_size * c.expert_intermediate_size * dtype_bytes(c.dtype);
  // A layer reads the distinct experts its tokens chose: E (1 - (1 - k / E)^B) of them when each
  // token's k choices fall uniformly (min(E, B k) would count every overlap twice, and put a
  // 16-token Qwen3-MoE step above the card's bandwidth).
  const double e = static_cast<double>(c.num_experts);
  const double unread = e * std::pow(1.0 - c.experts_per_token / e, batch);
  return streamed_weight_bytes() - std::llround(c.num_layers * unread * expert_bytes);
}

// The CUDA ops of the decoder graph for one forward step.
struct CudaModel::GraphOps {
  CudaModel* m = nullptr;
  const CudaForwardStep* step = nullptr;
  cudaStream_t stream = nullptr;
  DecodeAttentionParams decode;        // the step's, with the current layer's pools and scales
  int32_t n = 0;                       // query rows
  bool fused = false;                  // the fused layer (five or six kernels)
  bool pdl = false;                    // programmatic dependent launch (the attention's policy)
  const void* pending = nullptr;       // unfused: the last block's output, added by the next norm
  ops::ExpertSum pending_experts;      // or a mixture of experts' slots, summed by the next norm
  const void* pending_norm = nullptr;  // Gemma 3: the weight that normalizes `pending` first
  Fp8Product pending_fp8;              // or an fp8 product the next norm scales back and adds
  bool fp8_codes_ready = false;        // the op before wrote the next projection's fp8 codes
  bool partial_sum_pending = false;    // tensor parallelism: proj is this rank's part of a sum

  const ModelConfig& c() const { return m->config_; }
  CudaActivations& ws() const { return *step->activations; }
  const Weights::Layer& w(int64_t l) const { return m->weights_->layers[l]; }
  int64_t q_dim() const { return c().num_q_heads * c().head_dim; }
  int64_t kv_dim() const { return c().num_kv_heads * c().head_dim; }
  enum class Op { kGemm, kAttention };
  // Runs `launch`; when profiling, between two events listed under `op`.
  template <typename F>
  void timed(Op op, F&& launch) {
    if (!step->events) return launch();
    ForwardEvents::Pair e{};
    L2KV_CUDA_CHECK(cudaEventCreate(&e.start));
    L2KV_CUDA_CHECK(cudaEventCreate(&e.stop));
    L2KV_CUDA_CHECK(cudaEventRecord(e.start, stream));
    launch();
    L2KV_CUDA_CHECK(cudaEventRecord(e.stop, stream));
    (op == Op::kGemm ? step->events->gemm : step->events->attention).push_back(e);
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
  // The weights a fused GEMV reads for `p`; with fp8 weights their scales go into `f`.
  static const void* gemv_weights(const Projection& p, GemvFusion& f) {
    if (p.w8) {
      f.fp8_scale = p.w8->view().scale;
      f.fp8_per_channel = p.w8->view().per_channel;
    }
    return p.data();
  }
  // y[n, out] = x[n, in] W^T on the fused GEMV with `f`'s prologue and epilogue.
  void project_fused(const Projection& p, const void* x, void* y, GemvFusion f) {
    const void* weights = gemv_weights(p, f);
    m->gemm_.linear_fused(c().dtype, x, weights, y, n, p.in, p.out, f, stream);
  }
  // y[n, out] = x[n, in] W^T. With `defer_fp8_scales`, an fp8 product whose scales would take
  // a kernel of their own is left unscaled instead: returns it (y unwritten) for the next op
  // (add_rmsnorm, gated_mul or rope_and_cache) to scale back as it reads it, else returns an
  // empty one.
  Fp8Product project(const Projection& p, const void* x, void* y, bool defer_fp8_scales = false) {
    if (!p.w8) {
      m->gemm_.linear(c().dtype, x, p.w16, y, n, p.in, p.out, stream);
      return {};
    }
    Gemm::Fp8Scratch scratch{ws().fp8_codes.ptr, ws().fp8_row_scales.ptr,
                             m->weights_->fp8_widened.ptr, ws().fp8_product.ptr};
    scratch.codes_ready = std::exchange(fp8_codes_ready, false);
    scratch.defer_rescale = defer_fp8_scales;
    if (!m->gemm_.linear_fp8(c().dtype, x, p.w8->view(), y, n, p.in, p.out, scratch, stream))
      return {};
    return {scratch.product, scratch.row_scales, p.w8->view().scale};
  }
  // Where `next` (the projection after the op about to run) quantizes its input, the op writes
  // the codes itself: one kernel fewer, and its output read once. The codes and scales are
  // written in place of the pending product's: each row's scale is read before it is replaced.
  Fp8Rows fp8_codes_for(const Projection* next) {
    if (!m->fp8_fused_scales_ || next == nullptr || next->w8 == nullptr ||
        !ops::fp8_ops_take(next->in) || !m->gemm_.fp8_quantizes_input(n, next->in, next->out))
      return {};
    fp8_codes_ready = true;
    return {ws().fp8_codes.ptr, ws().fp8_row_scales.ptr};
  }
  // An fp8 product with its scales still to apply may wait for the norm after it (Gemma's extra
  // norm of the block output reads a 16-bit addend).
  bool defer_block_output_scales() const {
    return m->fp8_fused_scales_ && !c().gemma && ops::fp8_ops_take(c().hidden_size) &&
           m->comm_ == nullptr;  // a tensor-parallel rank all-reduces the scaled product
  }
  // A tensor-parallel rank's O or down output in proj is its part of the sum over ranks: the
  // next norm sums it (sum_partials_into_norm).
  void all_reduce_block_output() {
    if (m->comm_ != nullptr) partial_sum_pending = true;
  }
  ops::CollectiveType collective_type() const {
    return c().dtype == DType::kBFloat16 ? ops::CollectiveType::kBFloat16
                                         : ops::CollectiveType::kFloat16;
  }
  // The partial sums in proj: all-reduced, added and normalized in one kernel where the
  // one-shot path takes them and no fp8 codes are wanted (returns true: the norm is done),
  // else all-reduced in place for add_rmsnorm to add (returns false).
  bool sum_partials_into_norm(const void* weight, const Fp8Rows& codes) {
    const auto H = static_cast<int32_t>(c().hidden_size);
    if (!codes && pending == ws().proj.ptr && pending_norm == nullptr &&
        m->comm_->all_reduce_add_rmsnorm(collective_type(), ws().proj.ptr, ws().residual.ptr,
                                         weight, static_cast<float>(c().rms_norm_eps), n, H,
                                         ws().h.ptr, stream)) {
      pending = nullptr;
      return true;
    }
    m->comm_->all_reduce_sum(collective_type(), ws().proj.ptr, int64_t{n} * H, stream);
    return false;
  }
  // `next`: the projection that reads h, where there is one.
  void norm(const void* weight, const Projection* next = nullptr) {
    const Fp8Rows codes = fp8_codes_for(next);
    if (std::exchange(partial_sum_pending, false) && sum_partials_into_norm(weight, codes)) return;
    ops::add_rmsnorm(c().dtype, ws().residual.ptr, pending, weight,
                     static_cast<float>(c().rms_norm_eps), n, static_cast<int32_t>(c().hidden_size),
                     ws().h.ptr, stream, pdl, pending_experts, pending_norm, pending_fp8, codes);
    pending = nullptr;
    pending_experts = {};
    pending_norm = nullptr;
    pending_fp8 = {};
  }
  RowSumsq* sumsq(int i) const { return ws().sumsq.ptr + i * kGemvMaxRows; }
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
  // The fused layer's other prologue: h holds round(weight x residual), written by the residual
  // epilogue before it (weighted x, gemv.h); each row's sums are scaled by its 1 / rms from
  // sumsq(read), and sumsq(clear) is cleared. The projection starts with no normalization to
  // wait for, where each block of norm_prologue() first normalizes x into shared memory (a
  // chain of L2 round trips). gate_up takes it: on an H100 its 896 blocks read at 0.98 of the
  // ceiling instead of 0.93, the batch-1 step 1.1-1.6 % faster (bench/NOTES.md, "The fused
  // layer's weighted x"). QKV keeps the prologue: its 384 blocks run in one wave there (three
  // blocks per SM), and weighted x in either ring form was slower. bf16 only: in fp16,
  // weight x residual before the division by the rms can overflow or fall into subnormals.
  bool gate_up_takes_weighted_x() const { return c().dtype == DType::kBFloat16; }
  // gate_up of up to this many rows runs on the GEMV over the weighted x with SiLU x up in its
  // epilogue; above, on cuBLASLt over the weighted x, into float32, and weighted_silu_mul
  // applies the rows' 1 / rms. Either way no add_rmsnorm runs, and QKV after the first layer
  // reads the weighted x the down projection's epilogue wrote. Measured on an H100 (bench/
  // NOTES.md, "gate_up on the GEMV at 2-10 rows"): steps 2.7-5 % faster at 2-8 rows and 1-3 %
  // at 10 on Llama-3-8B, Qwen2.5-7B and Llama-2-7B; at 12-16 rows as fast or up to 3 % slower.
  // (With the norm prologue instead of the weighted x, the GEMV lost at 2-16 rows.)
  static constexpr int32_t kFusedGateUpGemvMaxRows = 10;
  bool gate_up_on_cublaslt() const {
    return n > kFusedGateUpGemvMaxRows && m->has_weighted_x_rows_form();
  }
  bool qkv_takes_weighted_x(int64_t l) const {
    return n > 1 && l > 0 && l < c().num_layers && m->has_weighted_x_rows_form();
  }
  GemvFusion weighted_x_prologue(int read, int clear) const {
    GemvFusion f;
    f.norm_sumsq = sumsq(read);
    f.clear_sumsq = sumsq(clear);
    f.eps = static_cast<float>(c().rms_norm_eps);
    return f;
  }
  // residual += the projection; its new sums of squares accumulate in sumsq(accumulate). With
  // `next_norm`, h gets the next projection's weighted x: round(next_norm x new residual).
  GemvFusion residual_epilogue(int accumulate, const void* next_norm = nullptr) const {
    GemvFusion f;
    f.epilogue = GemvEpilogue::kResidualAdd;
    f.residual = ws().residual.ptr;
    f.residual_sumsq = sumsq(accumulate);
    if (next_norm != nullptr) {
      f.weighted_x = ws().h.ptr;
      f.weighted_x_norm = next_norm;
    }
    return f;
  }

  void embed_tokens() {
    // Gemma scales its embeddings by sqrt(hidden) in the model's dtype (transformers casts the
    // scale to the weights' dtype, as vLLM does: sqrt(5376) = 73.32 becomes 73.5 in bf16).
    const float scale =
        c().gemma ? dtype_bits_to_float(
                        c().dtype, float_to_dtype_bits(
                                       c().dtype, std::sqrt(static_cast<float>(c().hidden_size))))
                  : 1.f;
    ops::embed(c().dtype, step->ids, n, m->weights_->embed.ptr,
               static_cast<int32_t>(c().hidden_size), ws().residual.ptr, stream,
               fused ? sumsq(0) : nullptr, scale);
  }
  // The layer's RoPE frequencies: a sliding-window layer's own (Gemma 3), else the model's.
  const float* inv_freq(int64_t l) const {
    return c().is_sliding(l) ? m->local_inv_freq_ : m->inv_freq_;
  }
  // Gemma 3: the block's output (proj) is RMS-normalized with `weight` by the next norm, as
  // it adds it to the residual stream.
  void norm_block_output(const DeviceArray<uint16_t>& weight) {
    if (c().gemma) pending_norm = weight.ptr;
  }
  void norm_qkv_rope(int64_t l) {
    const int64_t H = c().hidden_size, qkv_out = q_dim() + 2 * kv_dim();
    set_layer_kv(l);
    const Projection projection = qkv(l);
    if (!fused) norm(w(l).input_norm.ptr, &projection);
    const bool weighted = fused && qkv_takes_weighted_x(l);
    const void* x = fused && !weighted ? nullptr : ws().h.ptr;
    GemvFusion f = !fused     ? GemvFusion{}
                   : weighted ? weighted_x_prologue(0, 1)
                              : norm_prologue(w(l).input_norm.ptr, 0, 1);
    const void* weights = fused ? gemv_weights(projection, f) : w(l).qkv.ptr;
    const bool rope_here = add_rope_epilogue(l, x, weights, f);
    // The calculated fp8 KV scales read the 16-bit projection.
    const bool defer = m->fp8_fused_scales_ && !calculates_kv_scales(l);
    Fp8Product product;
    timed(Op::kGemm, [&] {
      if (fused || rope_here)
        m->gemm_.linear_fused(c().dtype, x, weights, ws().qkv.ptr, n, H, qkv_out, f, stream);
      else
        product = project(projection, ws().h.ptr, ws().qkv.ptr, defer);
    });
    if (!rope_here) rope_and_append_kv(l, product);
  }
  bool calculates_kv_scales(int64_t l) const {
    return step->calculate_kv_scales && !w(l).checkpoint_kv_scales;
  }
  // The current layer's pools and fp8 scales in the attention's paged-KV view.
  void set_layer_kv(int64_t l) {
    decode.kv.k_pool = step->k_pools[l];
    decode.kv.v_pool = step->v_pools[l];
    decode.kv.block_table = step->block_tables[l];
    decode.kv.k_scale = w(l).k_scale;
    decode.kv.v_scale = w(l).v_scale;
    decode.kv.device_scales = step->kv_scales + 2 * l;
    decode.sliding_window = c().is_sliding(l) ? static_cast<int32_t>(c().sliding_window) : 0;
  }
  // Qwen3's q/k norm in the QKV GEMV's RoPE epilogue (a head's blocks launched as one cluster)
  // up to this many rows. Measured on an H100 (bench/NOTES.md, "Qwen3's q/k norm in the QKV
  // epilogue"): Qwen3-8B 3.2 % faster at batch 1, 0.9 % at 8, 0.6 % slower at 2 and within the
  // run-to-run spread at 12 (-0.5 % and +0.9 % in two runs); Qwen3-30B-A3B 2.6-3.1 % faster at
  // 1 and 1.3 % at 8; at 16 rows 0.7 % slower (its register form spills more). Not with tensor
  // parallelism: in the tests its ranks share one GPU, where their spinning collectives kept a
  // cluster's blocks from being scheduled together until the collectives timed out; one GPU per
  // rank is untested.
  static constexpr int32_t kQkNormEpilogueMaxRows = 12;
  // Whether the QKV GEMV applies RoPE (after Qwen3's q/k norm, where the model has it) and
  // writes the KV cache itself (gemv.h's kRopeCache); if so, adds that epilogue to `f`. Where the
  // GEMV runs QKV anyway (the fused layer with 16-bit or fp8 `weights`, or a 16-bit step Gemm
  // sends to it), with no fp8 KV scales to calculate from this step's K and V first.
  bool add_rope_epilogue(int64_t l, const void* x, const void* weights, GemvFusion& f) const {
    const int64_t H = c().hidden_size, qkv_out = q_dim() + 2 * kv_dim();
    if (!step->rope_epilogue) return false;
    if (c().qk_norm && (n > kQkNormEpilogueMaxRows || m->comm_ != nullptr)) return false;
    const bool on_gemv =
        fused || (!c().fp8_weights && m->gemm_.routes_to_gemv(n, H, qkv_out, x, weights));
    if (!on_gemv || calculates_kv_scales(l)) return false;
    GemvFusion rope = f;
    rope.epilogue = GemvEpilogue::kRopeCache;
    rope.rope.bias = w(l).qkv_bias.ptr;
    rope.rope.positions = step->positions;
    rope.rope.slots = step->slots[l];
    rope.rope.inv_freq = inv_freq(l);
    rope.rope.q_out = ws().q.ptr;
    rope.rope.q_heads = static_cast<int32_t>(c().num_q_heads);
    rope.rope.kv = decode.kv;
    if (c().qk_norm) {
      rope.rope.q_norm = w(l).q_norm.ptr;
      rope.rope.k_norm = w(l).k_norm.ptr;
      rope.rope.norm_eps = static_cast<float>(c().rms_norm_eps);
    }
    if (!m->gemm_.fused_supported(n, H, qkv_out, x, weights, rope)) return false;
    f = rope;
    return true;
  }
  // `product`: the projection as an fp8 product still to scale back, else in ws().qkv.
  void rope_and_append_kv(int64_t l, const Fp8Product& product = {}) {
    const ops::QkNorm qk_norm{w(l).q_norm.ptr, w(l).k_norm.ptr,
                              static_cast<float>(c().rms_norm_eps)};  // null pointers: none
    // The projection's rows (and so qkv's columns and the bias) are in paired order.
    constexpr bool kPairRows = true;
    if (calculates_kv_scales(l))
      ops::calculate_kv_scales(ws().qkv.ptr, w(l).qkv_bias.ptr, step->positions, step->slots[l],
                               inv_freq(l), n, static_cast<int32_t>(c().num_q_heads), decode.kv,
                               step->kv_scales + 2 * l, stream, qk_norm, kPairRows);
    ops::rope_and_cache(ws().qkv.ptr, w(l).qkv_bias.ptr, step->positions, step->slots[l],
                        inv_freq(l), n, static_cast<int32_t>(c().num_q_heads), decode.kv,
                        ws().q.ptr, stream, pdl, qk_norm, kPairRows, product);
  }
  void attention(int64_t) {
    timed(Op::kAttention, [&] { step->attention_op->run(decode, step->decode_only, stream); });
  }
  void output_projection_add(int64_t l) {
    timed(Op::kGemm, [&] {
      if (fused)
        project_fused(
            o(l), ws().attn.ptr, nullptr,
            residual_epilogue(1, gate_up_takes_weighted_x() ? w(l).post_norm.ptr : nullptr));
      else
        pending_fp8 = project(o(l), ws().attn.ptr, ws().proj.ptr, defer_block_output_scales());
    });
    if (fused) return;
    all_reduce_block_output();
    norm_block_output(w(l).attention_out_norm);
    if (!pending_fp8) pending = ws().proj.ptr;  // added by the next norm
  }
  // Nine kernels, one row: gate_up with SiLU x up in the GEMV's epilogue instead of cuBLASLt and
  // gated_mul. Measured on an H200 (bench/NOTES.md, "The GEMV's weights in a shared-memory
  // ring"): 2 % faster steps at batch 1, 3 % slower at 4 and 8, 7 % at 16.
  static constexpr int32_t kGateUpGemvMaxRows = 1;
  bool gate_up_silu_on_gemv() const {
    return n <= kGateUpGemvMaxRows && m->gate_up_interleaved_ && !c().fp8_weights &&
           c().mlp_activation == MlpActivation::kSilu;
  }
  void norm_gate_up_silu(int64_t l) {
    const int64_t H = c().hidden_size, I = c().intermediate_size;
    if (c().num_experts > 0) {
      norm(w(l).post_norm.ptr);
      mixture_of_experts(l);
      return;
    }
    if (fused && gate_up_on_cublaslt()) {
      timed(Op::kGemm, [&] {
        m->gemm_.linear_f32_out(c().dtype, ws().h.ptr, w(l).gate_up.ptr, ws().gate_up_f32.ptr, n, H,
                                2 * I, stream);
      });
      const ops::RowRmsScale rms{sumsq(1), sumsq(0), static_cast<int32_t>(H),
                                 static_cast<float>(c().rms_norm_eps)};
      ops::weighted_silu_mul(c().dtype, ws().gate_up_f32.ptr, rms, n, static_cast<int32_t>(I),
                             ws().act.ptr, stream, pdl, m->gate_up_interleaved_);
      return;
    }
    if (fused) {
      const bool weighted = gate_up_takes_weighted_x();
      GemvFusion f = weighted ? weighted_x_prologue(1, 0) : norm_prologue(w(l).post_norm.ptr, 1, 0);
      f.epilogue = GemvEpilogue::kSiluMul;
      timed(Op::kGemm,
            [&] { project_fused(gate_up(l), weighted ? ws().h.ptr : nullptr, ws().act.ptr, f); });
      return;
    }
    const Projection projection = gate_up(l);
    norm(w(l).post_norm.ptr, &projection);
    if (gate_up_silu_on_gemv()) {
      GemvFusion f;
      f.epilogue = GemvEpilogue::kSiluMul;
      timed(Op::kGemm, [&] {
        m->gemm_.linear_fused(c().dtype, ws().h.ptr, w(l).gate_up.ptr, ws().act.ptr, n, H, 2 * I, f,
                              stream);
      });
      return;
    }
    Fp8Product product;
    timed(Op::kGemm, [&] {
      product = project(projection, ws().h.ptr, ws().gate_up.ptr,
                        m->fp8_fused_scales_ && ops::fp8_ops_take(I));
    });
    const Projection next = down(l);
    ops::gated_mul(c().dtype, ws().gate_up.ptr, n, static_cast<int32_t>(I), ws().act.ptr, stream,
                   pdl, m->gate_up_interleaved_,
                   c().mlp_activation == MlpActivation::kGeluTanh ? ops::GateActivation::kGeluTanh
                                                                  : ops::GateActivation::kSilu,
                   product, fp8_codes_for(&next));
  }
  // The router's top-k experts per token and each chosen expert's SwiGLU MLP on its token; their
  // weighted sum is the next norm's addend (pending_experts), as a dense MLP's down projection
  // is. Where can_capture_rows() holds, or inside a graph capture, the slots are grouped by
  // expert on the device and each chosen expert streams its weights through a GEMV once per 8 of
  // its slots; larger steps (prompts) wait for the choices on the host, group the slots there
  // and run cuBLASLt once per chosen expert.
  // moe_route, moe_group and down's expert GEMV can start early (programmatic dependent launch;
  // their kernels and test support it), but that chain has not run on a GPU yet: off until a run
  // shows it correct and faster (bench/NOTES.md).
  static constexpr bool kMoeEarlyLaunch = false;
  void mixture_of_experts(int64_t l) {
    const bool moe_pdl = pdl && kMoeEarlyLaunch;
    const int64_t H = c().hidden_size, I = c().expert_intermediate_size, E = c().num_experts;
    const auto K = static_cast<int32_t>(c().experts_per_token);
    const int32_t slots = n * K;
    timed(Op::kGemm, [&] {
      m->gemm_.linear_f32_out(c().dtype, ws().h.ptr, w(l).router.ptr, ws().router_logits.ptr, n, H,
                              E, stream);
    });
    ops::moe_route(ws().router_logits.ptr, n, static_cast<int32_t>(E), K, c().norm_topk_prob,
                   ws().moe_experts.ptr, ws().moe_weights.ptr, stream, moe_pdl);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    L2KV_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
    if (capture != cudaStreamCaptureStatusNone || m->can_capture_rows(n)) {
      // gate_up is launched in order (not early): moe_group has finished before it starts.
      ops::moe_group(ws().moe_experts.ptr, slots, static_cast<int32_t>(E), ws().moe_first.ptr,
                     ws().moe_slot_rows.ptr, ws().moe_active.ptr, stream, moe_pdl);
      const auto max_active = static_cast<int32_t>(std::min<int64_t>(E, slots));
      timed(Op::kGemm, [&] {
        ops::expert_gemv_silu_mul(c().dtype, ws().h.ptr, K, ws().moe_first.ptr,
                                  ws().moe_slot_rows.ptr, ws().moe_active.ptr, max_active,
                                  w(l).experts_gate_up.ptr, I, H, ws().act.ptr, stream);
      });
      // down starts while gate_up drains (the slot lists are moe_group's, finished before
      // gate_up began); with it the next layer's kernels also start early, as in dense layers.
      timed(Op::kGemm, [&] {
        ops::expert_gemv(c().dtype, ws().act.ptr, 1, ws().moe_first.ptr, ws().moe_slot_rows.ptr,
                         ws().moe_active.ptr, max_active, w(l).experts_down.ptr, H, I,
                         ws().moe_y.ptr, stream, moe_pdl);
      });
      // The weighted sum of the slots is the next norm's addend (no kernel of its own).
      pending_experts = {ws().moe_y.ptr, ws().moe_weights.ptr, K, nullptr};
      return;
    }
    // Grouped by expert: slot s goes to row slot_rows[s] of the gathered rows, which are in
    // expert order; x_rows[r] is the token row that feeds gathered row r.
    std::vector<int32_t> experts(static_cast<size_t>(slots));
    L2KV_CUDA_CHECK(cudaMemcpyAsync(experts.data(), ws().moe_experts.ptr, experts.size() * 4,
                                    cudaMemcpyDeviceToHost, stream));
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
    std::vector<int32_t> first(static_cast<size_t>(E + 1), 0);
    for (int32_t e : experts) {
      if (e < 0 || e >= E)  // only a non-finite router row could get here
        throw Error("CUDA backend: the router chose expert " + std::to_string(e) + " of " +
                    std::to_string(E) + " in layer " + std::to_string(l));
      ++first[static_cast<size_t>(e) + 1];
    }
    for (int64_t e = 0; e < E; ++e) first[e + 1] += first[e];
    std::vector<int32_t> slot_rows(experts.size()), x_rows(experts.size());
    std::vector<int32_t> next(first.begin(), first.end() - 1);
    for (int32_t s = 0; s < slots; ++s) {
      const int32_t r = next[static_cast<size_t>(experts[s])]++;
      slot_rows[s] = r;
      x_rows[r] = s / K;
    }
    // From pageable memory: the copies have read the vectors when they return.
    L2KV_CUDA_CHECK(cudaMemcpyAsync(ws().moe_slot_rows.ptr, slot_rows.data(), slot_rows.size() * 4,
                                    cudaMemcpyHostToDevice, stream));
    L2KV_CUDA_CHECK(cudaMemcpyAsync(ws().moe_x_rows.ptr, x_rows.data(), x_rows.size() * 4,
                                    cudaMemcpyHostToDevice, stream));
    ops::gather_rows(ws().h.ptr, ws().moe_x_rows.ptr, slots, static_cast<int32_t>(H),
                     ws().moe_x.ptr, stream);
    timed(Op::kGemm, [&] {
      for (int64_t e = 0; e < E; ++e)
        if (const int32_t rows = first[e + 1] - first[e]; rows > 0)
          m->gemm_.linear_untimed(c().dtype, ws().moe_x.ptr + first[e] * H,
                                  w(l).experts_gate_up.ptr + e * 2 * I * H,
                                  ws().gate_up.ptr + first[e] * 2 * I, rows, H, 2 * I, stream);
    });
    ops::gated_mul(c().dtype, ws().gate_up.ptr, slots, static_cast<int32_t>(I), ws().act.ptr,
                   stream);
    timed(Op::kGemm, [&] {
      for (int64_t e = 0; e < E; ++e)
        if (const int32_t rows = first[e + 1] - first[e]; rows > 0)
          m->gemm_.linear_untimed(c().dtype, ws().act.ptr + first[e] * I,
                                  w(l).experts_down.ptr + e * H * I, ws().moe_y.ptr + first[e] * H,
                                  rows, I, H, stream);
    });
    pending_experts = {ws().moe_y.ptr, ws().moe_weights.ptr, K, ws().moe_slot_rows.ptr};
  }
  void down_projection_add(int64_t l) {
    if (c().num_experts > 0) return;  // mixture_of_experts() left its sum to the next norm
    timed(Op::kGemm, [&] {
      if (fused)
        project_fused(
            down(l), ws().act.ptr, nullptr,
            residual_epilogue(0, qkv_takes_weighted_x(l + 1) ? w(l + 1).input_norm.ptr : nullptr));
      else
        pending_fp8 = project(down(l), ws().act.ptr, ws().proj.ptr, defer_block_output_scales());
    });
    if (fused) return;
    all_reduce_block_output();
    norm_block_output(w(l).mlp_out_norm);
    if (!pending_fp8) pending = ws().proj.ptr;
  }
  void final_norm() { norm(m->weights_->final_norm.ptr); }
  void lm_head() {
    const int64_t H = c().hidden_size;
    // Decode rows all want logits, in order: the LM head reads h directly.
    const bool direct = step->decode_only || step->all_logits;
    const int32_t rows = step->all_logits ? n : step->logit_rows;
    if (rows == 0) return;  // a prompt chunk that samples nothing
    if (!direct)
      ops::gather_rows(ws().h.ptr, step->last_rows, rows, static_cast<int32_t>(H), ws().last.ptr,
                       stream);
    // A tensor-parallel rank computes its part of the vocabulary; rank 0 gathers them.
    float* logits = m->comm_ ? ws().logits_part.ptr : ws().logits.ptr;
    timed(Op::kGemm, [&] {
      m->gemm_.linear_f32_out(c().dtype, direct ? ws().h.ptr : ws().last.ptr,
                              m->weights_->lm_head_ptr(), logits, rows, H, m->shard_.vocab, stream);
    });
    m->complete_logits(ws(), rows, ws().logits.ptr, stream);
  }
};

void CudaModel::forward(const CudaForwardStep& step, cudaStream_t stream) {
  if (step.rows <= 0 || !step.activations || !step.attention_op || !step.kv_scales ||
      static_cast<int64_t>(step.k_pools.size()) != config_.num_layers ||
      static_cast<int64_t>(step.v_pools.size()) != config_.num_layers ||
      static_cast<int64_t>(step.slots.size()) != config_.num_layers ||
      static_cast<int64_t>(step.block_tables.size()) != config_.num_layers)
    throw Error("CUDA backend: forward() of an incomplete step");
  if (step.fused_layer && !can_fuse_layer(step.rows))
    throw Error("CUDA backend: the fused layer does not serve a step of " +
                std::to_string(step.rows) + " rows");
  GraphOps g;
  g.m = this;
  g.step = &step;
  g.stream = stream;
  g.decode = step.attention;
  g.n = step.rows;
  g.fused = step.fused_layer;
  g.pdl = step.attention_op->prefetch().pdl;
  // With PDL the GEMV projections (batches of up to 8 rows) also start behind the norm,
  // attention and SiLU kernels while those finish.
  gemm_.set_programmatic_launch(g.pdl);
  run_decoder_graph(g, config_.num_layers);
}

void CudaModel::hidden_row_logits(CudaActivations& activations, int32_t first_row, int32_t rows,
                                  float* out, cudaStream_t stream) {
  if (rows < 1 || rows > kMaxHiddenRowLogits || first_row < 0)
    throw Error("CUDA backend: hidden rows " + std::to_string(first_row) + " + " +
                std::to_string(rows) + " (at most " + std::to_string(kMaxHiddenRowLogits) +
                " at once)");
  if (out == nullptr && shard_.rank == 0)
    throw Error("CUDA backend: hidden_row_logits() into a null buffer");
  const int64_t H = config_.hidden_size;
  // Copied to the start of a buffer, as lm_head() gathers them: the LM head's GEMM plans are
  // chosen per shape on aligned operands, and a row of h may start at any multiple of H.
  L2KV_CUDA_CHECK(cudaMemcpyAsync(
      activations.hidden_rows.ptr, activations.h.ptr + int64_t{first_row} * H,
      static_cast<size_t>(int64_t{rows} * H) * sizeof(uint16_t), cudaMemcpyDeviceToDevice, stream));
  // A tensor-parallel rank: its part of the vocabulary, gathered into rank 0's `out`.
  float* logits = comm_ ? activations.logits_part.ptr : out;
  gemm_.linear_f32_out(config_.dtype, activations.hidden_rows.ptr, weights_->lm_head_ptr(), logits,
                       rows, H, shard_.vocab, stream);
  complete_logits(activations, rows, out, stream);
}

void CudaModel::cap_logits(float* logits, int32_t rows, cudaStream_t stream) const {
  if (config_.final_logit_softcapping > 0)
    ops::soft_cap(logits, int64_t{rows} * config_.vocab_size,
                  static_cast<float>(config_.final_logit_softcapping), stream);
}

}  // namespace l2kv
