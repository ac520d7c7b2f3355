#include "l2kv/kernels/attention/decode_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <thread>

namespace l2kv {
namespace {

void reference_one_sequence(const DecodeAttentionParams& p, int32_t seq, float* out) {
  const PagedKvCache& kv = p.kv;
  const auto* q = static_cast<const uint16_t*>(p.q);
  // K/V element `index` of a pool, dequantized as the kernels do (fp8: stored * scale).
  auto kv_value = [&kv](const void* pool, int64_t index, float scale) -> double {
    if (kv.fp8())
      return static_cast<double>(fp8_e4m3_bits_to_float(static_cast<const uint8_t*>(pool)[index])) *
             scale;
    return dtype_bits_to_float(kv.dtype, static_cast<const uint16_t*>(pool)[index]);
  };
  const int32_t len = kv.seq_lens[seq];
  const int32_t first = p.sliding_window > 0 ? std::max(0, len - p.sliding_window) : 0;
  const int32_t d = kv.head_dim;
  const int32_t group = p.group_size();
  std::vector<double> logits(len);
  std::vector<double> q_row(d);
  std::vector<double> acc(d);
  for (int32_t head = 0; head < p.num_q_heads; ++head) {
    const int32_t kv_head = head / group;
    for (int32_t i = 0; i < d; ++i)
      q_row[i] = dtype_bits_to_float(kv.dtype,
                                     q[(static_cast<int64_t>(seq) * p.num_q_heads + head) * d + i]);
    double max_logit = -INFINITY;
    for (int32_t t = first; t < len; ++t) {
      const int32_t physical =
          kv.block_table[static_cast<int64_t>(seq) * kv.max_blocks_per_seq + t / kv.block_size];
      const int64_t k_row = kv.offset(physical, t % kv.block_size, kv_head);
      double dot = 0;
      for (int32_t i = 0; i < d; ++i) dot += q_row[i] * kv_value(kv.k_pool, k_row + i, kv.k_scale);
      logits[t] = dot * p.softmax_scale;
      max_logit = std::max(max_logit, logits[t]);
    }
    double sum = 0;
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int32_t t = first; t < len; ++t) {
      const double w = std::exp(logits[t] - max_logit);
      sum += w;
      const int32_t physical =
          kv.block_table[static_cast<int64_t>(seq) * kv.max_blocks_per_seq + t / kv.block_size];
      const int64_t v_row = kv.offset(physical, t % kv.block_size, kv_head);
      for (int32_t i = 0; i < d; ++i) acc[i] += w * kv_value(kv.v_pool, v_row + i, kv.v_scale);
    }
    float* o = out + (static_cast<int64_t>(seq) * p.num_q_heads + head) * d;
    for (int32_t i = 0; i < d; ++i) o[i] = static_cast<float>(acc[i] / sum);
  }
}

}  // namespace

std::vector<float> decode_attention_reference(const DecodeAttentionParams& host_params) {
  const PagedKvCache& kv = host_params.kv;
  const std::span<const int32_t> lens(kv.seq_lens, kv.batch_size > 0 ? kv.batch_size : 0);
  const std::span<const int32_t> table(
      kv.block_table,
      kv.batch_size > 0 ? static_cast<size_t>(kv.batch_size) * kv.max_blocks_per_seq : 0);
  DecodeAttentionParams checked = host_params;
  if (checked.out == nullptr) checked.out = const_cast<void*>(host_params.q);  // not written
  validate_decode_attention(checked, lens, table);

  std::vector<float> out(static_cast<size_t>(kv.batch_size) * host_params.num_q_heads *
                         kv.head_dim);
  const int32_t workers =
      static_cast<int32_t>(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1u, 16u));
  std::vector<std::thread> threads;
  for (int32_t w = 0; w < workers; ++w)
    threads.emplace_back([&, w] {
      for (int32_t seq = w; seq < kv.batch_size; seq += workers)
        reference_one_sequence(host_params, seq, out.data());
    });
  for (auto& t : threads) t.join();
  return out;
}

}  // namespace l2kv
