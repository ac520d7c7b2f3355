#include "l2kv/model/cpu_model.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <thread>

#include "l2kv/core/error.h"
#include "l2kv/model/decoder_graph.h"
#include "l2kv/model/safetensors.h"

namespace l2kv {
namespace {

// y[t, o] = sum_i x[t, i] * w[o, i] (+ b[o]); rows of the output split over threads.
std::vector<float> linear(const std::vector<float>& x, int64_t rows, int64_t in,
                          const std::vector<float>& w, int64_t out,
                          const std::vector<float>& bias = {}) {
  std::vector<float> y(static_cast<size_t>(rows * out));
  const int64_t workers = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, 16);
  auto work = [&](int64_t first_out, int64_t last_out) {
    for (int64_t t = 0; t < rows; ++t) {
      const float* xr = x.data() + t * in;
      for (int64_t o = first_out; o < last_out; ++o) {
        const float* wr = w.data() + o * in;
        float acc = 0.f;
        for (int64_t i = 0; i < in; ++i) acc += xr[i] * wr[i];
        y[t * out + o] = acc + (bias.empty() ? 0.f : bias[o]);
      }
    }
  };
  if (rows * out * in < (1 << 20) || workers == 1) {
    work(0, out);
    return y;
  }
  std::vector<std::thread> threads;
  const int64_t chunk = (out + workers - 1) / workers;
  for (int64_t first = 0; first < out; first += chunk)
    threads.emplace_back(work, first, std::min(out, first + chunk));
  for (auto& th : threads) th.join();
  return y;
}

void rms_norm(std::vector<float>& x, int64_t rows, int64_t dim, const std::vector<float>& weight,
              double eps) {
  for (int64_t t = 0; t < rows; ++t) {
    float* r = x.data() + t * dim;
    float sum = 0.f;
    for (int64_t i = 0; i < dim; ++i) sum += r[i] * r[i];
    const float scale = 1.f / std::sqrt(sum / static_cast<float>(dim) + static_cast<float>(eps));
    for (int64_t i = 0; i < dim; ++i) r[i] = weight[i] * (r[i] * scale);
  }
}

// Neox-style rotation of each head: pairs (i, i + d/2); row t sits at position first_pos + t.
void apply_rope(std::vector<float>& x, int64_t rows, int64_t first_pos, int64_t heads,
                int64_t head_dim, const std::vector<float>& inv_freq) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t h = 0; h < heads; ++h) {
      float* v = x.data() + (t * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float angle =
            static_cast<float>(first_pos + t) * inv_freq[i];  // float32, as transformers
        const float c = std::cos(angle), s = std::sin(angle);
        const float a = v[i], b = v[i + half];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
      }
    }
}

// CpuSequenceState as a CpuKvCache: each layer's array grows to the positions asked for.
class ContiguousKv final : public CpuKvCache {
 public:
  ContiguousKv(CpuSequenceState& state, int64_t num_layers, int64_t row_size)
      : state_(state), row_(row_size) {
    if (state_.keys.empty()) {
      state_.keys.resize(static_cast<size_t>(num_layers));
      state_.values.resize(static_cast<size_t>(num_layers));
    }
  }
  void reserve(int64_t length) override {
    for (auto& k : state_.keys) k.resize(static_cast<size_t>(length * row_));
    for (auto& v : state_.values) v.resize(static_cast<size_t>(length * row_));
  }
  float* key(int64_t layer, int64_t position) override {
    return state_.keys[layer].data() + position * row_;
  }
  float* value(int64_t layer, int64_t position) override {
    return state_.values[layer].data() + position * row_;
  }

 private:
  CpuSequenceState& state_;
  int64_t row_;
};

}  // namespace

CpuKvPool::CpuKvPool(const ModelConfig& config, int64_t blocks, int64_t block_tokens,
                     int64_t kv_heads, std::optional<KvCacheGroups> kv_groups)
    : groups(kv_groups ? std::move(*kv_groups) : single_kv_cache_group(config)),
      num_blocks(blocks),
      block_size(block_tokens),
      row_size((kv_heads > 0 ? kv_heads : config.num_kv_heads) * config.head_dim) {
  if (blocks < 1 || block_tokens < 1)
    throw Error("CpuKvPool: needs at least one block of at least one token");
  if (groups.num_layers() != config.num_layers)
    throw Error("CpuKvPool: KV cache groups for " + std::to_string(groups.num_layers()) +
                " layers, the model has " + std::to_string(config.num_layers));
  const auto size = static_cast<size_t>(groups.num_slots * num_blocks * block_size * row_size);
  keys.assign(size, std::numeric_limits<float>::quiet_NaN());
  values.assign(size, std::numeric_limits<float>::quiet_NaN());
}

int64_t CpuKvPool::bytes_per_block(const ModelConfig& config, int64_t block_size,
                                   const KvCacheGroups& groups) {
  return 2 * int64_t{groups.num_slots} * block_size * config.num_kv_heads * config.head_dim *
         static_cast<int64_t>(sizeof(float));
}

CpuPagedKvView::CpuPagedKvView(CpuKvPool& pool, std::span<const std::span<const int32_t>> tables)
    : pool_(pool), tables_(tables.begin(), tables.end()) {
  if (static_cast<int32_t>(tables_.size()) != pool_.groups.num_groups())
    throw Error("paged KV: " + std::to_string(tables_.size()) + " block tables for a pool of " +
                std::to_string(pool_.groups.num_groups()) + " KV cache groups");
  for (std::span<const int32_t> table : tables_)
    for (int32_t block : table)
      if (block < 0 || block >= pool_.num_blocks)
        throw Error("paged KV: block " + std::to_string(block) + " outside a pool of " +
                    std::to_string(pool_.num_blocks) + " blocks");
}

CpuPagedKvView::CpuPagedKvView(CpuKvPool& pool, std::span<const int32_t> block_table)
    : CpuPagedKvView(pool, std::span<const std::span<const int32_t>>(&block_table, 1)) {}

void CpuPagedKvView::reserve(int64_t length) {
  for (std::span<const int32_t> table : tables_) {
    const int64_t covered = static_cast<int64_t>(table.size()) * pool_.block_size;
    if (length > covered)
      throw Error("paged KV: the block table covers " + std::to_string(covered) +
                  " positions, the step needs " + std::to_string(length));
  }
}

int64_t CpuPagedKvView::offset(int64_t layer, int64_t position) const {
  const auto l = static_cast<size_t>(layer);
  const std::span<const int32_t> table = tables_[static_cast<size_t>(pool_.groups.layer_group[l])];
  const int64_t block = table[static_cast<size_t>(position / pool_.block_size)];
  const int64_t slot = pool_.groups.layer_slot[l];
  return ((slot * pool_.num_blocks + block) * pool_.block_size + position % pool_.block_size) *
         pool_.row_size;
}

float* CpuPagedKvView::key(int64_t layer, int64_t position) {
  return pool_.keys.data() + offset(layer, position);
}

float* CpuPagedKvView::value(int64_t layer, int64_t position) {
  return pool_.values.data() + offset(layer, position);
}

CpuModel::CpuModel(const std::filesystem::path& folder) : CpuModel(folder, nullptr) {}

CpuModel::CpuModel(const std::filesystem::path& folder, Communicator& comm)
    : CpuModel(folder, &comm) {}

CpuModel::CpuModel(const std::filesystem::path& folder, Communicator* comm)
    : config_(ModelConfig::from_folder(folder)), comm_(comm) {
  const ModelConfig& c = config_;
  q_heads_ = c.num_q_heads, kv_heads_ = c.num_kv_heads, inter_ = c.intermediate_size;
  vocab_ = c.vocab_size;
  if (comm != nullptr) {
    shard_ = tp_shard(c, comm->rank(), comm->size());  // refuses a bad split before any read
    q_heads_ = shard_->q_heads, kv_heads_ = shard_->kv_heads, inter_ = shard_->inter;
    vocab_begin_ = shard_->vocab_begin, vocab_ = shard_->vocab;
  }
  const TpShard* slices = shard_ ? &*shard_ : nullptr;
  const Checkpoint ckpt(folder);
  HfGlobalWeights globals = load_hf_global_weights(ckpt, c, slices);
  embed_ = std::move(globals.embed);
  lm_head_ = std::move(globals.lm_head);
  final_norm_ = std::move(globals.final_norm);
  for (int64_t l = 0; l < c.num_layers; ++l)
    layers_.push_back(load_hf_layer_weights(ckpt, c, l, Fp8Projections::kDequantized, slices));
  inv_freq_ = rope_inverse_frequencies(c.rope, c.head_dim);
  local_inv_freq_ = rope_inverse_frequencies(c.local_rope, c.head_dim);
}

std::vector<float> CpuModel::forward(std::span<const int32_t> tokens) const {
  CpuSequenceState state;
  return extend(state, tokens);
}

// The CPU ops of the decoder graph for one sequence's new tokens.
struct CpuModel::GraphOps {
  GraphOps(const CpuModel& model, CpuKvCache& kv_cache, int64_t start_position,
           std::span<const int32_t> new_tokens, int64_t first_logit_row)
      : m(model),
        kv(kv_cache),
        tokens(new_tokens),
        T(static_cast<int64_t>(new_tokens.size())),
        past(start_position),
        first_logit(first_logit_row) {}

  const CpuModel& m;
  CpuKvCache& kv;
  std::span<const int32_t> tokens;
  const int64_t T;
  const int64_t past;
  const int64_t first_logit;  // the LM head runs on rows [first_logit, T) only
  std::vector<float> residual, h, q, k_new, v_new, attn, act, block_out, logits;
  std::vector<float> quantized;  // fp8_input's rows

  const ModelConfig& c() const { return m.config_; }
  // A tensor-parallel rank's O and down outputs are partial sums over its heads or features.
  void all_reduce(std::vector<float>& partial) {
    if (m.comm_ != nullptr) m.comm_->all_reduce_sum(partial);
  }
  void add_block_output() {
    for (size_t i = 0; i < block_out.size(); ++i) residual[i] += block_out[i];
    block_out.clear();
  }
  void norm(const std::vector<float>& weight) {
    h = residual;
    rms_norm(h, T, c().hidden_size, weight, c().rms_norm_eps);
  }
  // The input rows of an fp8 projection as set_fp8_activation_rows() asks: `x` itself, or each
  // row rounded to the model's dtype, quantized to E4M3 with scale max|row| / 448 and expanded.
  const std::vector<float>& fp8_input(const std::vector<float>& x, int64_t in) {
    if (!c().fp8_weights || m.fp8_activation_rows_ < 0 || T <= m.fp8_activation_rows_) return x;
    quantized.resize(x.size());
    for (int64_t t = 0; t < T; ++t) {
      float* row = quantized.data() + t * in;
      float amax = 0.f;
      for (int64_t i = 0; i < in; ++i) {
        row[i] = dtype_bits_to_float(c().dtype, float_to_dtype_bits(c().dtype, x[t * in + i]));
        amax = std::max(amax, std::fabs(row[i]));
      }
      const float scale = amax > 0.f ? amax / 448.f : 1.f;
      for (int64_t i = 0; i < in; ++i)
        row[i] = fp8_e4m3_bits_to_float(float_to_fp8_e4m3_bits(row[i] / scale)) * scale;
    }
    return quantized;
  }

  void embed_tokens() {
    const int64_t H = c().hidden_size;
    residual.resize(static_cast<size_t>(T * H));
    for (int64_t t = 0; t < T; ++t)
      std::copy_n(m.embed_.begin() + tokens[t] * H, H, residual.begin() + t * H);
    if (c().gemma) {  // Gemma scales its embeddings by sqrt(hidden)
      const float scale = std::sqrt(static_cast<float>(H));
      for (float& x : residual) x *= scale;
    }
  }
  void norm_qkv_rope(int64_t l) {
    norm(m.layers_[l].input_norm);
    const Layer& w = m.layers_[l];
    const int64_t H = c().hidden_size, q_dim = m.q_heads_ * c().head_dim,
                  kv_dim = m.kv_heads_ * c().head_dim;
    const std::vector<float>& x = fp8_input(h, H);  // QKV is one projection on CUDA
    q = linear(x, T, H, w.q, q_dim, w.q_bias);
    k_new = linear(x, T, H, w.k, kv_dim, w.k_bias);
    v_new = linear(x, T, H, w.v, kv_dim, w.v_bias);
    if (c().qk_norm) {  // each head its own RMSNorm row, before RoPE
      rms_norm(q, T * m.q_heads_, c().head_dim, w.q_norm, c().rms_norm_eps);
      rms_norm(k_new, T * m.kv_heads_, c().head_dim, w.k_norm, c().rms_norm_eps);
    }
    const std::vector<float>& inv_freq = c().is_sliding(l) ? m.local_inv_freq_ : m.inv_freq_;
    apply_rope(q, T, past, m.q_heads_, c().head_dim, inv_freq);
    apply_rope(k_new, T, past, m.kv_heads_, c().head_dim, inv_freq);
    const int64_t row = kv_dim;
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(k_new.begin() + t * row, row, kv.key(l, past + t));
      std::copy_n(v_new.begin() + t * row, row, kv.value(l, past + t));
    }
    kv.stored(l, past, T);
  }
  void attention(int64_t l) {
    // A rank's q heads and its KV heads keep the model's grouping (or all share its one KV head).
    const int64_t D = c().head_dim, heads = m.q_heads_, group = heads / m.kv_heads_;
    const float scale = c().attention_scale > 0 ? static_cast<float>(c().attention_scale)
                                                : 1.f / std::sqrt(static_cast<float>(D));
    const float cap = static_cast<float>(c().attn_logit_softcapping);
    // A sliding-window layer sees the last sliding_window positions, its own included.
    const int64_t window = c().is_sliding(l) ? c().sliding_window : past + T;
    // Row pointers of every visible position, looked up once per layer.
    std::vector<const float*> k(static_cast<size_t>(past + T)), v(k.size());
    for (int64_t s = 0; s < past + T; ++s) {
      k[s] = kv.key(l, s);
      v[s] = kv.value(l, s);
    }
    attn.assign(static_cast<size_t>(T * heads * D), 0.f);
    std::vector<float> scores(static_cast<size_t>(past + T));
    for (int64_t head = 0; head < heads; ++head) {
      const int64_t kvh = head / group;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t visible = past + t + 1;  // causal: cached positions and new ones up to t
        const int64_t first = std::max<int64_t>(0, visible - window);
        const float* qr = q.data() + (t * heads + head) * D;
        float max_score = -INFINITY;
        for (int64_t s = first; s < visible; ++s) {
          const float* kr = k[s] + kvh * D;
          float dot = 0.f;
          for (int64_t i = 0; i < D; ++i) dot += qr[i] * kr[i];
          scores[s] = dot * scale;
          if (cap > 0) scores[s] = cap * std::tanh(scores[s] / cap);
          max_score = std::max(max_score, scores[s]);
        }
        float sum = 0.f;
        for (int64_t s = first; s < visible; ++s)
          sum += (scores[s] = std::exp(scores[s] - max_score));
        float* out = attn.data() + (t * heads + head) * D;
        for (int64_t s = first; s < visible; ++s) {
          const float w = scores[s] / sum;
          const float* vr = v[s] + kvh * D;
          for (int64_t i = 0; i < D; ++i) out[i] += w * vr[i];
        }
      }
    }
  }
  void output_projection_add(int64_t l) {
    const int64_t q_dim = m.q_heads_ * c().head_dim;
    block_out = linear(fp8_input(attn, q_dim), T, q_dim, m.layers_[l].o, c().hidden_size);
    all_reduce(block_out);
    if (c().gemma)
      rms_norm(block_out, T, c().hidden_size, m.layers_[l].post_attention_norm, c().rms_norm_eps);
    add_block_output();
  }
  void norm_gate_up_silu(int64_t l) {
    const Layer& w = m.layers_[l];
    norm(c().gemma ? w.pre_feedforward_norm : w.post_attention_norm);
    if (c().num_experts > 0) return mixture_of_experts(w);
    const int64_t H = c().hidden_size, I = m.inter_;
    const std::vector<float>& in = fp8_input(h, H);  // gate_up is one projection on CUDA
    act = linear(in, T, H, w.gate, I);
    const std::vector<float> up = linear(in, T, H, w.up, I);
    if (c().mlp_activation == MlpActivation::kGeluTanh) {
      constexpr float kSqrt2OverPi = 0.7978845608028654f;
      for (size_t i = 0; i < act.size(); ++i) {  // GeGLU, GELU's tanh form
        const float x = act[i];
        act[i] = 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x))) * up[i];
      }
    } else {
      for (size_t i = 0; i < act.size(); ++i)
        act[i] = act[i] / (1.f + std::exp(-act[i])) * up[i];  // SwiGLU
    }
  }
  void down_projection_add(int64_t l) {
    if (c().num_experts == 0) {  // a mixture of experts has its output in block_out already
      block_out = linear(fp8_input(act, m.inter_), T, m.inter_, m.layers_[l].down, c().hidden_size);
      all_reduce(block_out);
    }
    if (c().gemma)
      rms_norm(block_out, T, c().hidden_size, m.layers_[l].post_feedforward_norm, c().rms_norm_eps);
    add_block_output();
  }
  // block_out[t] = sum over the experts the router picks for token t of weight * expert(h[t]),
  // an expert being silu(gate h) * (up h) then down: as transformers' Mixtral and Qwen3-MoE
  // blocks (softmax over all experts in float32, the top k, renormalized if norm_topk_prob).
  void mixture_of_experts(const Layer& w) {
    const int64_t H = c().hidden_size, E = c().num_experts, K = c().experts_per_token,
                  I = c().expert_intermediate_size;
    const std::vector<float> router = linear(h, T, H, w.router, E);
    block_out.assign(static_cast<size_t>(T * H), 0.f);
    std::vector<int64_t> order(static_cast<size_t>(E));
    for (int64_t t = 0; t < T; ++t) {
      const float* scores = router.data() + t * E;
      const float top = *std::max_element(scores, scores + E);
      std::vector<float> p(static_cast<size_t>(E));
      float sum = 0.f;
      for (int64_t e = 0; e < E; ++e) sum += (p[e] = std::exp(scores[e] - top));
      for (float& x : p) x /= sum;
      for (int64_t e = 0; e < E; ++e) order[e] = e;
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int64_t a, int64_t b) {
        return p[a] > p[b] || (p[a] == p[b] && a < b);
      });
      float chosen = 0.f;
      for (int64_t k = 0; k < K; ++k) chosen += p[order[k]];
      const std::vector<float> x(h.begin() + t * H, h.begin() + (t + 1) * H);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t e = order[k];
        const float weight = c().norm_topk_prob ? p[e] / chosen : p[e];
        std::vector<float> a = linear(x, 1, H, w.expert_gate[e], I);
        const std::vector<float> up = linear(x, 1, H, w.expert_up[e], I);
        for (int64_t i = 0; i < I; ++i) a[i] = a[i] / (1.f + std::exp(-a[i])) * up[i];
        const std::vector<float> y = linear(a, 1, I, w.expert_down[e], H);
        for (int64_t i = 0; i < H; ++i) block_out[t * H + i] += weight * y[i];
      }
    }
  }
  void final_norm() { norm(m.final_norm_); }
  void lm_head() {
    const int64_t rows = T - first_logit;
    if (rows <= 0) return;  // no row's logits wanted (a prompt chunk that samples nothing)
    const int64_t H = c().hidden_size;
    const std::vector<float> tail = first_logit == 0
                                        ? std::vector<float>{}
                                        : std::vector<float>(h.begin() + first_logit * H, h.end());
    logits = linear(first_logit == 0 ? h : tail, rows, H,
                    m.lm_head_.empty() ? m.embed_ : m.lm_head_, m.vocab_);
    if (m.comm_ != nullptr) {
      // Each rank's logits into its columns of zeros: the sum over ranks is the whole row.
      const int64_t V = c().vocab_size;
      std::vector<float> all(static_cast<size_t>(rows * V), 0.f);
      for (int64_t t = 0; t < rows; ++t)
        std::copy_n(logits.begin() + t * m.vocab_, m.vocab_, all.begin() + t * V + m.vocab_begin_);
      m.comm_->all_reduce_sum(all);
      logits = std::move(all);
    }
    if (const auto cap = static_cast<float>(c().final_logit_softcapping); cap > 0)
      for (float& x : logits) x = cap * std::tanh(x / cap);
  }
};

void CpuModel::check_chunk(int64_t start_position, std::span<const int32_t> tokens) const {
  if (tokens.empty()) throw Error("forward: empty sequence");
  if (start_position < 0) throw Error("forward: negative start position");
  for (int32_t t : tokens)
    if (t < 0 || t >= config_.vocab_size)
      throw Error("forward: token id " + std::to_string(t) + " outside the vocabulary of " +
                  std::to_string(config_.vocab_size));
}

std::vector<float> CpuModel::extend(CpuKvCache& cache, int64_t start_position,
                                    std::span<const int32_t> tokens,
                                    int64_t first_logit_row) const {
  check_chunk(start_position, tokens);
  if (first_logit_row < 0) throw Error("forward: negative first logit row");
  cache.reserve(start_position + static_cast<int64_t>(tokens.size()));
  GraphOps ops(*this, cache, start_position, tokens, first_logit_row);
  run_decoder_graph(ops, config_.num_layers);
  return std::move(ops.logits);
}

std::vector<float> CpuModel::extend(CpuSequenceState& state,
                                    std::span<const int32_t> tokens) const {
  ContiguousKv kv(state, config_.num_layers, kv_heads_ * config_.head_dim);
  std::vector<float> logits = extend(kv, state.length, tokens);
  state.length += static_cast<int64_t>(tokens.size());
  return logits;
}

std::vector<int32_t> CpuModel::greedy(std::span<const int32_t> prompt, int steps) const {
  CpuSequenceState state;
  std::vector<float> logits = extend(state, prompt);
  std::vector<int32_t> out;
  for (int i = 0; i < steps; ++i) {
    const float* last = logits.data() + logits.size() - config_.vocab_size;
    const int32_t next =
        static_cast<int32_t>(std::max_element(last, last + config_.vocab_size) - last);
    out.push_back(next);
    if (i + 1 < steps) logits = extend(state, std::span<const int32_t>(&out.back(), 1));
  }
  return out;
}

}  // namespace l2kv
