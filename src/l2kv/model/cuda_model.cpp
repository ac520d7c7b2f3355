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

template <typename T>
DeviceArray<T> upload(const std::vector<T>& host) {
  DeviceArray<T> d(std::max<size_t>(host.size(), 1));
  L2KV_CUDA_CHECK(cudaMemcpy(d.ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

}  // namespace

struct CudaModel::Weights {
  struct Layer {
    DeviceArray<uint16_t> input_norm, post_norm, qkv, qkv_bias, o, gate_up, down;
  };
  DeviceArray<uint16_t> embed, lm_head, final_norm;
  std::vector<Layer> layers;
  const uint16_t* lm_head_ptr() const { return lm_head.ptr ? lm_head.ptr : embed.ptr; }
};

CudaModel::CudaModel(const std::filesystem::path& folder, int32_t kv_blocks)
    : config_(ModelConfig::from_folder(folder)), weights_(std::make_unique<Weights>()) {
  const Checkpoint ckpt(folder);
  const ModelConfig& c = config_;
  const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  auto load = [&](const std::string& name, std::vector<int64_t> shape) {
    return ckpt.get(name, shape).to_float();
  };
  auto concat = [](std::vector<float> a, const std::vector<float>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  weights_->embed =
      upload_16bit(c.dtype, load("model.embed_tokens.weight", {c.vocab_size, c.hidden_size}));
  if (!c.tie_word_embeddings)
    weights_->lm_head =
        upload_16bit(c.dtype, load("lm_head.weight", {c.vocab_size, c.hidden_size}));
  weights_->final_norm = upload_16bit(c.dtype, load("model.norm.weight", {c.hidden_size}));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Weights::Layer layer;
    layer.input_norm = upload_16bit(c.dtype, load(p + "input_layernorm.weight", {c.hidden_size}));
    layer.post_norm =
        upload_16bit(c.dtype, load(p + "post_attention_layernorm.weight", {c.hidden_size}));
    layer.qkv = upload_16bit(
        c.dtype, concat(concat(load(p + "self_attn.q_proj.weight", {q_dim, c.hidden_size}),
                               load(p + "self_attn.k_proj.weight", {kv_dim, c.hidden_size})),
                        load(p + "self_attn.v_proj.weight", {kv_dim, c.hidden_size})));
    if (c.qkv_bias)
      layer.qkv_bias =
          upload_16bit(c.dtype, concat(concat(load(p + "self_attn.q_proj.bias", {q_dim}),
                                              load(p + "self_attn.k_proj.bias", {kv_dim})),
                                       load(p + "self_attn.v_proj.bias", {kv_dim})));
    layer.o = upload_16bit(c.dtype, load(p + "self_attn.o_proj.weight", {c.hidden_size, q_dim}));
    layer.gate_up = upload_16bit(
        c.dtype, concat(load(p + "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size}),
                        load(p + "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size})));
    layer.down = upload_16bit(
        c.dtype, load(p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size}));
    weights_->layers.push_back(std::move(layer));
  }
  allocate_cache(kv_blocks);
}

CudaModel::CudaModel(const ModelConfig& config, uint64_t seed, int32_t kv_blocks)
    : config_(config), weights_(std::make_unique<Weights>()) {
  const ModelConfig& c = config_;
  const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  auto random = [&](int64_t n, float scale) {
    DeviceArray<uint16_t> d(static_cast<size_t>(n));
    fill_random(d.ptr, n, c.dtype, scale, seed++, nullptr);
    return d;
  };
  const std::vector<float> ones(static_cast<size_t>(c.hidden_size), 1.f);
  const float scale = 0.02f * std::sqrt(3.f);  // std 0.02, as HF initializes
  weights_->embed = random(c.vocab_size * c.hidden_size, scale);
  if (!c.tie_word_embeddings) weights_->lm_head = random(c.vocab_size * c.hidden_size, scale);
  weights_->final_norm = upload_16bit(c.dtype, ones);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    Weights::Layer layer;
    layer.input_norm = upload_16bit(c.dtype, ones);
    layer.post_norm = upload_16bit(c.dtype, ones);
    layer.qkv = random((q_dim + 2 * kv_dim) * c.hidden_size, scale);
    if (c.qkv_bias) layer.qkv_bias = random(q_dim + 2 * kv_dim, scale);
    layer.o = random(c.hidden_size * q_dim, scale);
    layer.gate_up = random(2 * c.intermediate_size * c.hidden_size, scale);
    layer.down = random(c.hidden_size * c.intermediate_size, scale);
    weights_->layers.push_back(std::move(layer));
  }
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  allocate_cache(kv_blocks);
}

void CudaModel::allocate_cache(int32_t kv_blocks) {
  const ModelConfig& c = config_;
  if (c.head_dim != 64 && c.head_dim != 128)
    throw Error("CUDA backend: head_dim must be 64 or 128");
  if (kv_blocks <= 0) throw Error("CUDA backend: kv_blocks must be positive");
  kv_blocks_ = kv_blocks;
  const size_t pool_bytes =
      static_cast<size_t>(kv_blocks) * kBlockSize * c.num_kv_heads * c.head_dim * 2;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    void *k = nullptr, *v = nullptr;
    L2KV_CUDA_CHECK(cudaMalloc(&k, pool_bytes));
    k_pools_.push_back(k);
    L2KV_CUDA_CHECK(cudaMalloc(&v, pool_bytes));
    v_pools_.push_back(v);
  }
  for (int32_t b = kv_blocks - 1; b >= 0; --b) free_blocks_.push_back(b);
  const std::vector<float> inv = rope_inverse_frequencies(c.rope, c.head_dim);
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&inv_freq_), inv.size() * sizeof(float)));
  L2KV_CUDA_CHECK(
      cudaMemcpy(inv_freq_, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice));
}

CudaModel::~CudaModel() {
  for (void* p : k_pools_) cudaFree(p);
  for (void* p : v_pools_) cudaFree(p);
  if (inv_freq_) cudaFree(inv_freq_);
}

void CudaModel::release(CudaSequence& sequence) {
  free_blocks_.insert(free_blocks_.end(), sequence.blocks.begin(), sequence.blocks.end());
  sequence = {};
}

// The CUDA ops of the decoder graph for one extend() call: device buffers of the batch, the
// attention kernels planned for it, and optional event timing of projections and attention.
struct CudaModel::GraphOps {
  using EventPairs = std::vector<std::pair<cudaEvent_t, cudaEvent_t>>;
  CudaModel* m = nullptr;
  cudaStream_t stream = nullptr;
  int32_t n = 0;     // query rows (new tokens)
  int32_t rows = 0;  // logits rows
  bool decode_only = true, all_logits = false;
  const int32_t *ids = nullptr, *positions = nullptr, *slots = nullptr, *last_rows = nullptr;
  float* residual = nullptr;
  float* logits = nullptr;
  void *h = nullptr, *qkv = nullptr, *q = nullptr, *attn = nullptr, *proj = nullptr,
       *gate_up = nullptr, *act = nullptr, *last = nullptr;
  const void* pending = nullptr;  // the last block's output, added to the residual by the next norm
  DecodeAttentionParams* decode = nullptr;  // attention shapes and the paged-KV view
  EventPairs gemm_events, attention_events;

  const ModelConfig& c() const { return m->config_; }
  const Weights::Layer& w(int64_t l) const { return m->weights_->layers[l]; }
  int64_t q_dim() const { return c().num_q_heads * c().head_dim; }
  int64_t kv_dim() const { return c().num_kv_heads * c().head_dim; }
  template <typename F>
  void timed(EventPairs& list, F&& launch) {
    if (!m->profiling_) return launch();
    cudaEvent_t a, b;
    L2KV_CUDA_CHECK(cudaEventCreate(&a));
    L2KV_CUDA_CHECK(cudaEventCreate(&b));
    L2KV_CUDA_CHECK(cudaEventRecord(a, stream));
    launch();
    L2KV_CUDA_CHECK(cudaEventRecord(b, stream));
    list.emplace_back(a, b);
  }
  void norm(const void* weight) {
    ops::add_rmsnorm(c().dtype, residual, pending, weight, static_cast<float>(c().rms_norm_eps), n,
                     static_cast<int32_t>(c().hidden_size), h, stream);
    pending = nullptr;
  }

  void embed_tokens() {
    ops::embed(c().dtype, ids, n, m->weights_->embed.ptr, static_cast<int32_t>(c().hidden_size),
               residual, stream);
  }
  void attention_norm(int64_t l) { norm(w(l).input_norm.ptr); }
  void qkv_projection(int64_t l) {
    timed(gemm_events, [&] {
      m->gemm_.linear(c().dtype, h, w(l).qkv.ptr, qkv, n, c().hidden_size, q_dim() + 2 * kv_dim(),
                      stream);
    });
  }
  void rope_and_append_kv(int64_t l) {
    decode->kv.k_pool = m->k_pools_[l];
    decode->kv.v_pool = m->v_pools_[l];
    ops::rope_and_cache(qkv, w(l).qkv_bias.ptr, positions, slots, m->inv_freq_, n,
                        static_cast<int32_t>(c().num_q_heads), decode->kv, q, stream);
  }
  void attention(int64_t) {
    timed(attention_events, [&] {
      if (decode_only)
        m->attention_.run(*decode, PrefetchPolicy::off(), stream);
      else
        m->prefill_.run(q, attn, decode->kv, decode->num_q_heads, decode->softmax_scale, stream);
    });
  }
  void output_projection(int64_t l) {
    timed(gemm_events, [&] {
      m->gemm_.linear(c().dtype, attn, w(l).o.ptr, proj, n, q_dim(), c().hidden_size, stream);
    });
    pending = proj;
  }
  void mlp_norm(int64_t l) { norm(w(l).post_norm.ptr); }
  void mlp(int64_t l) {
    const int64_t H = c().hidden_size, I = c().intermediate_size;
    timed(gemm_events,
          [&] { m->gemm_.linear(c().dtype, h, w(l).gate_up.ptr, gate_up, n, H, 2 * I, stream); });
    ops::silu_mul(c().dtype, gate_up, n, static_cast<int32_t>(I), act, stream);
    timed(gemm_events,
          [&] { m->gemm_.linear(c().dtype, act, w(l).down.ptr, proj, n, I, H, stream); });
    pending = proj;
  }
  void final_norm() { norm(m->weights_->final_norm.ptr); }
  void lm_head() {
    const int64_t H = c().hidden_size;
    if (!all_logits) ops::gather_rows(h, last_rows, rows, static_cast<int32_t>(H), last, stream);
    timed(gemm_events, [&] {
      m->gemm_.linear_f32_out(c().dtype, all_logits ? h : last, m->weights_->lm_head_ptr(), logits,
                              rows, H, c().vocab_size, stream);
    });
  }
};

std::vector<float> CudaModel::extend(std::span<CudaSequence* const> sequences,
                                     std::span<const std::vector<int32_t>> tokens, bool all_logits,
                                     cudaStream_t stream) {
  const ModelConfig& c = config_;
  if (sequences.size() != tokens.size() || sequences.empty())
    throw Error("extend: one token list per sequence");
  // Blocks needed before anything changes, so a failure leaves every sequence as it was.
  size_t needed = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    if (tokens[s].empty()) throw Error("extend: sequence " + std::to_string(s) + " has no tokens");
    for (int32_t tok : tokens[s])
      if (tok < 0 || tok >= c.vocab_size)
        throw Error("extend: token id " + std::to_string(tok) + " outside the vocabulary");
    const int32_t new_len = sequences[s]->length + static_cast<int32_t>(tokens[s].size());
    needed += std::max<int64_t>(0, (new_len + kBlockSize - 1) / kBlockSize -
                                       static_cast<int64_t>(sequences[s]->blocks.size()));
  }
  if (needed > free_blocks_.size())
    throw Error("extend: the KV pool has " + std::to_string(free_blocks_.size()) +
                " free blocks, " + std::to_string(needed) + " needed");
  // Host plan. One paged-KV view per sequence serves both kernels: in a decode step each
  // sequence has exactly one query row, and prefill chunks are planned per sequence.
  std::vector<int32_t> ids, positions, slots, last_rows;
  int32_t max_blocks = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    CudaSequence& seq = *sequences[s];
    const int32_t new_len = seq.length + static_cast<int32_t>(tokens[s].size());
    while (static_cast<int32_t>(seq.blocks.size()) * kBlockSize < new_len) {
      seq.blocks.push_back(free_blocks_.back());
      free_blocks_.pop_back();
    }
    max_blocks = std::max(max_blocks, static_cast<int32_t>(seq.blocks.size()));
  }
  std::vector<int32_t> seq_table, seq_lens;
  std::vector<PrefillChunk> chunks;
  bool decode_only = true;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const CudaSequence& seq = *sequences[s];
    const size_t row = seq_table.size();
    seq_table.resize(row + max_blocks, 0);
    std::copy(seq.blocks.begin(), seq.blocks.end(), seq_table.begin() + static_cast<int64_t>(row));
    seq_lens.push_back(seq.length + static_cast<int32_t>(tokens[s].size()));
    decode_only &= tokens[s].size() == 1;
  }
  for (size_t s = 0; s < sequences.size(); ++s) {
    CudaSequence& seq = *sequences[s];
    chunks.push_back({static_cast<int32_t>(s), static_cast<int32_t>(ids.size()),
                      static_cast<int32_t>(tokens[s].size()), seq.length});
    for (size_t i = 0; i < tokens[s].size(); ++i) {
      const int32_t pos = seq.length + static_cast<int32_t>(i);
      ids.push_back(tokens[s][i]);
      positions.push_back(pos);
      slots.push_back(seq.blocks[pos / kBlockSize] * kBlockSize + pos % kBlockSize);
    }
    last_rows.push_back(static_cast<int32_t>(ids.size()) - 1);
  }
  const int32_t n = static_cast<int32_t>(ids.size());
  const int64_t H = c.hidden_size, D = c.head_dim, q_dim = c.num_q_heads * D,
                kv_dim = c.num_kv_heads * D;
  const int64_t I = c.intermediate_size, V = c.vocab_size;
  auto d_ids = upload(ids), d_pos = upload(positions), d_slots = upload(slots);
  auto d_last = upload(last_rows), d_seq_table = upload(seq_table), d_seq_lens = upload(seq_lens);
  DeviceArray<float> residual(static_cast<size_t>(n * H));
  DeviceArray<uint16_t> h(static_cast<size_t>(n * H)),
      qkv(static_cast<size_t>(n * (q_dim + 2 * kv_dim)));
  DeviceArray<uint16_t> q(static_cast<size_t>(n * q_dim)), attn(static_cast<size_t>(n * q_dim));
  DeviceArray<uint16_t> proj(static_cast<size_t>(n * H)), gate_up(static_cast<size_t>(n * 2 * I)),
      act(static_cast<size_t>(n * I));

  DecodeAttentionParams p;
  p.q = q.ptr;
  p.out = attn.ptr;
  p.num_q_heads = static_cast<int32_t>(c.num_q_heads);
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(D));
  p.max_seq_len = *std::max_element(seq_lens.begin(), seq_lens.end());
  p.kv.block_table = d_seq_table.ptr;
  p.kv.seq_lens = d_seq_lens.ptr;
  p.kv.num_blocks = kv_blocks_;
  p.kv.block_size = kBlockSize;
  p.kv.num_kv_heads = static_cast<int32_t>(c.num_kv_heads);
  p.kv.head_dim = static_cast<int32_t>(D);
  p.kv.batch_size = static_cast<int32_t>(sequences.size());
  p.kv.max_blocks_per_seq = max_blocks;
  p.kv.layout = KvLayout::kHND;
  p.kv.dtype = c.dtype;
  p.kv.k_pool = k_pools_[0];
  p.kv.v_pool = v_pools_[0];
  if (decode_only)
    attention_.plan(p, seq_lens, stream);  // the same plan serves every layer
  else
    prefill_.plan(p.kv, p.num_q_heads, chunks, stream);

  const int32_t rows = all_logits ? n : static_cast<int32_t>(last_rows.size());
  DeviceArray<uint16_t> last(all_logits ? 0 : static_cast<size_t>(rows * H));
  DeviceArray<float> logits(static_cast<size_t>(rows * V));
  GraphOps g;
  g.m = this;
  g.stream = stream;
  g.n = n;
  g.rows = rows;
  g.decode_only = decode_only;
  g.all_logits = all_logits;
  g.ids = d_ids.ptr, g.positions = d_pos.ptr, g.slots = d_slots.ptr, g.last_rows = d_last.ptr;
  g.residual = residual.ptr, g.logits = logits.ptr;
  g.h = h.ptr, g.qkv = qkv.ptr, g.q = q.ptr, g.attn = attn.ptr, g.proj = proj.ptr,
  g.gate_up = gate_up.ptr;
  g.act = act.ptr, g.last = last.ptr;
  g.decode = &p;
  cudaEvent_t total_start = nullptr, total_stop = nullptr;
  if (profiling_) {
    L2KV_CUDA_CHECK(cudaEventCreate(&total_start));
    L2KV_CUDA_CHECK(cudaEventCreate(&total_stop));
    L2KV_CUDA_CHECK(cudaEventRecord(total_start, stream));
  }
  run_decoder_graph(g, c.num_layers);
  if (profiling_) L2KV_CUDA_CHECK(cudaEventRecord(total_stop, stream));
  std::vector<float> out(static_cast<size_t>(rows * V));
  L2KV_CUDA_CHECK(cudaMemcpyAsync(out.data(), logits.ptr, out.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (profiling_) {
    auto sum = [](std::vector<std::pair<cudaEvent_t, cudaEvent_t>>& list) {
      double total = 0;
      for (auto& [a, b] : list) {
        float ms = 0;
        L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
        total += ms;
        cudaEventDestroy(a);
        cudaEventDestroy(b);
      }
      return total;
    };
    op_times_.gemm_ms = sum(g.gemm_events);
    op_times_.attention_ms = sum(g.attention_events);
    float ms = 0;
    L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, total_start, total_stop));
    op_times_.total_ms = ms;
    cudaEventDestroy(total_start);
    cudaEventDestroy(total_stop);
  }
  for (size_t s = 0; s < sequences.size(); ++s)
    sequences[s]->length += static_cast<int32_t>(tokens[s].size());
  return out;
}

}  // namespace l2kv
