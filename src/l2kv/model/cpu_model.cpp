#include "l2kv/model/cpu_model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <thread>

#include "l2kv/core/error.h"
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

}  // namespace

CpuModel::CpuModel(const std::filesystem::path& folder)
    : config_(ModelConfig::from_folder(folder)) {
  const Checkpoint ckpt(folder);
  const ModelConfig& c = config_;
  const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  auto load = [&](const std::string& name, std::vector<int64_t> shape) {
    return ckpt.get(name, shape).to_float();
  };
  embed_ = load("model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  if (!c.tie_word_embeddings) lm_head_ = load("lm_head.weight", {c.vocab_size, c.hidden_size});
  final_norm_ = load("model.norm.weight", {c.hidden_size});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer layer;
    layer.input_norm = load(p + "input_layernorm.weight", {c.hidden_size});
    layer.post_attention_norm = load(p + "post_attention_layernorm.weight", {c.hidden_size});
    layer.q = load(p + "self_attn.q_proj.weight", {q_dim, c.hidden_size});
    layer.k = load(p + "self_attn.k_proj.weight", {kv_dim, c.hidden_size});
    layer.v = load(p + "self_attn.v_proj.weight", {kv_dim, c.hidden_size});
    layer.o = load(p + "self_attn.o_proj.weight", {c.hidden_size, q_dim});
    if (c.qkv_bias) {
      layer.q_bias = load(p + "self_attn.q_proj.bias", {q_dim});
      layer.k_bias = load(p + "self_attn.k_proj.bias", {kv_dim});
      layer.v_bias = load(p + "self_attn.v_proj.bias", {kv_dim});
    }
    layer.gate = load(p + "mlp.gate_proj.weight", {c.intermediate_size, c.hidden_size});
    layer.up = load(p + "mlp.up_proj.weight", {c.intermediate_size, c.hidden_size});
    layer.down = load(p + "mlp.down_proj.weight", {c.hidden_size, c.intermediate_size});
    layers_.push_back(std::move(layer));
  }
  inv_freq_ = rope_inverse_frequencies(c.rope, c.head_dim);
}

std::vector<float> CpuModel::forward(std::span<const int32_t> tokens) const {
  CpuSequenceState state;
  return extend(state, tokens);
}

std::vector<float> CpuModel::extend(CpuSequenceState& state,
                                    std::span<const int32_t> tokens) const {
  const ModelConfig& c = config_;
  const int64_t T = static_cast<int64_t>(tokens.size()), H = c.hidden_size, D = c.head_dim;
  const int64_t q_dim = c.num_q_heads * D, kv_dim = c.num_kv_heads * D,
                group = c.num_q_heads / c.num_kv_heads;
  if (T == 0) throw Error("forward: empty sequence");
  const int64_t past = state.length;
  if (state.keys.empty()) {
    state.keys.resize(layers_.size());
    state.values.resize(layers_.size());
  }
  std::vector<float> x(static_cast<size_t>(T * H));
  for (int64_t t = 0; t < T; ++t) {
    if (tokens[t] < 0 || tokens[t] >= c.vocab_size)
      throw Error("forward: token id " + std::to_string(tokens[t]) + " outside the vocabulary of " +
                  std::to_string(c.vocab_size));
    std::copy_n(embed_.begin() + tokens[t] * H, H, x.begin() + t * H);
  }
  const float scale = 1.f / std::sqrt(static_cast<float>(D));
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    std::vector<float> h = x;
    rms_norm(h, T, H, layer.input_norm, c.rms_norm_eps);
    std::vector<float> q = linear(h, T, H, layer.q, q_dim, layer.q_bias);
    std::vector<float> k_new = linear(h, T, H, layer.k, kv_dim, layer.k_bias);
    const std::vector<float> v_new = linear(h, T, H, layer.v, kv_dim, layer.v_bias);
    apply_rope(q, T, past, c.num_q_heads, D, inv_freq_);
    apply_rope(k_new, T, past, c.num_kv_heads, D, inv_freq_);
    std::vector<float>& k = state.keys[l];
    std::vector<float>& v = state.values[l];
    k.insert(k.end(), k_new.begin(), k_new.end());
    v.insert(v.end(), v_new.begin(), v_new.end());
    std::vector<float> attn(static_cast<size_t>(T * q_dim), 0.f);
    std::vector<float> scores(static_cast<size_t>(past + T));
    for (int64_t head = 0; head < c.num_q_heads; ++head) {
      const int64_t kvh = head / group;
      for (int64_t t = 0; t < T; ++t) {
        const int64_t visible = past + t + 1;  // causal: cached positions and new ones up to t
        const float* qr = q.data() + (t * c.num_q_heads + head) * D;
        float max_score = -INFINITY;
        for (int64_t s = 0; s < visible; ++s) {
          const float* kr = k.data() + (s * c.num_kv_heads + kvh) * D;
          float dot = 0.f;
          for (int64_t i = 0; i < D; ++i) dot += qr[i] * kr[i];
          scores[s] = dot * scale;
          max_score = std::max(max_score, scores[s]);
        }
        float sum = 0.f;
        for (int64_t s = 0; s < visible; ++s) sum += (scores[s] = std::exp(scores[s] - max_score));
        float* out = attn.data() + (t * c.num_q_heads + head) * D;
        for (int64_t s = 0; s < visible; ++s) {
          const float w = scores[s] / sum;
          const float* vr = v.data() + (s * c.num_kv_heads + kvh) * D;
          for (int64_t i = 0; i < D; ++i) out[i] += w * vr[i];
        }
      }
    }
    const std::vector<float> o = linear(attn, T, q_dim, layer.o, H);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    h = x;
    rms_norm(h, T, H, layer.post_attention_norm, c.rms_norm_eps);
    std::vector<float> gate = linear(h, T, H, layer.gate, c.intermediate_size);
    const std::vector<float> up = linear(h, T, H, layer.up, c.intermediate_size);
    for (size_t i = 0; i < gate.size(); ++i)
      gate[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];  // SwiGLU
    const std::vector<float> down = linear(gate, T, c.intermediate_size, layer.down, H);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }
  state.length += T;
  rms_norm(x, T, H, final_norm_, c.rms_norm_eps);
  return linear(x, T, H, lm_head_.empty() ? embed_ : lm_head_, c.vocab_size);
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
