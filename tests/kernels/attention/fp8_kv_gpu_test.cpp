// The fp8 E4M3 KV cache: the RoPE + KV-write kernel stores exactly what the host quantizer
// gives, and the decode (split and paged_v1) and prefill kernels read stored K/V with their
// per-layer scales like the CPU reference that dequantizes the same bytes. Fresh random inputs,
// ragged lengths, shuffled block tables, poisoned outputs; per-row errors against per-dtype
// bounds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/decode_reference.h"
#include "l2kv/kernels/attention/prefill_attention.h"
#include "l2kv/kernels/attention/split_decode.h"
#include "l2kv/kernels/model/model_ops.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;
using testing::DeviceDecodeProblem;

// A 16-bit problem whose K and V pools are then quantized to E4M3 with the given scales.
struct Fp8Problem {
  DecodeProblem base;
  std::vector<uint8_t> k8, v8;
  float k_scale, v_scale;

  Fp8Problem(const DecodeProblemConfig& config, float k_scale_in, float v_scale_in)
      : base(DecodeProblem::make(config)), k_scale(k_scale_in), v_scale(v_scale_in) {
    // Values in [-1, 1) divided by scales below 1 span E4M3's range as calibrated scales do.
    auto quantize = [&](const std::vector<uint16_t>& pool, float scale) {
      std::vector<uint8_t> out(pool.size());
      for (size_t i = 0; i < pool.size(); ++i)
        out[i] = float_to_fp8_e4m3_bits(dtype_bits_to_float(config.dtype, pool[i]) / scale);
      return out;
    };
    k8 = quantize(base.k_pool, k_scale);
    v8 = quantize(base.v_pool, v_scale);
  }
  DecodeAttentionParams host_params() {
    DecodeAttentionParams p = base.host_params();
    p.kv.k_pool = k8.data();
    p.kv.v_pool = v8.data();
    p.kv.storage = KvStorage::kFp8E4M3;
    p.kv.k_scale = k_scale;
    p.kv.v_scale = v_scale;
    return p;
  }
};

// Device form: DeviceDecodeProblem's Q, tables, lengths and output, plus fp8 pools.
struct DeviceFp8Pools {
  void* k = nullptr;
  void* v = nullptr;
  DecodeAttentionParams params;
  DeviceFp8Pools(const Fp8Problem& host, const DeviceDecodeProblem& device) {
    L2KV_CUDA_CHECK(cudaMalloc(&k, host.k8.size()));
    L2KV_CUDA_CHECK(cudaMalloc(&v, host.v8.size()));
    L2KV_CUDA_CHECK(cudaMemcpy(k, host.k8.data(), host.k8.size(), cudaMemcpyHostToDevice));
    L2KV_CUDA_CHECK(cudaMemcpy(v, host.v8.data(), host.v8.size(), cudaMemcpyHostToDevice));
    params = device.params();
    params.kv.k_pool = k;
    params.kv.v_pool = v;
    params.kv.storage = KvStorage::kFp8E4M3;
    params.kv.k_scale = host.k_scale;
    params.kv.v_scale = host.v_scale;
  }
  ~DeviceFp8Pools() {
    cudaFree(k);
    cudaFree(v);
  }
};

using Fp8Param = std::tuple<DType, int32_t /*head_dim*/, int32_t /*group*/, int32_t /*block*/,
                            KvLayout, float /*q_scale*/>;
class Fp8Decode : public ::testing::TestWithParam<Fp8Param> {};

// The parameter's shape with random ragged lengths (the first of one token) drawn from
// `seed_base` and the shape.
DecodeProblemConfig fp8_decode_config(const Fp8Param& param, int seed_base) {
  const auto [dtype, head_dim, group, block, layout, q_scale] = param;
  DecodeProblemConfig c = testing::two_kv_heads_config(dtype, head_dim, group, block, layout);
  c.q_scale = q_scale;
  c.seed = seed_base + head_dim + group * 3 + block + static_cast<int>(q_scale);
  c.seq_lens = testing::random_lengths(testing::quick_mode() ? 3 : 7,
                                       testing::quick_mode() ? 400 : 3000, c.seed);
  c.seq_lens[0] = 1;
  return c;
}

TEST_P(Fp8Decode, SplitMatchesTheDequantizingReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DecodeProblemConfig c = fp8_decode_config(GetParam(), 5000);
  // Scales away from 1 so a kernel that drops one fails; stored magnitudes up to ~64 and ~16.
  Fp8Problem host(c, 1.f / 64, 1.f / 16);
  const auto reference = decode_attention_reference(host.host_params());
  DeviceDecodeProblem device(host.base);
  DeviceFp8Pools pools(host, device);
  for (const char* policy : {"off", "on:2", "auto+pdl"}) {
    for (const bool graph_mode : {false, true}) {
      SCOPED_TRACE(std::string(policy) + (graph_mode ? " graph mode" : ""));
      SplitDecode split;
      if (graph_mode) split.reserve_for_graphs(16, pools.params);
      device.poison_output();
      split.plan(pools.params, c.seq_lens, nullptr);
      split.run(pools.params, parse_prefetch_policy(policy), nullptr);
      // The kernel and the reference read the same E4M3 values: what remains is the dtype's
      // rounding of P and of the output, so the 16-bit bounds apply.
      EXPECT_TRUE(testing::rows_match(device.download_output(), reference, c.head_dim,
                                      c.num_q_heads, c.dtype, policy));
    }
  }
}

// paged_v1 reads the same bytes with 16-byte loads widened in registers, with and without the
// paper's prefetch.
TEST_P(Fp8Decode, PagedV1MatchesTheDequantizingReference) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c = fp8_decode_config(GetParam(), 7000);
  c.seq_lens.back() = c.block_size + 1;  // one token into the second block
  Fp8Problem host(c, 1.f / 64, 1.f / 16);
  const auto reference = decode_attention_reference(host.host_params());
  DeviceDecodeProblem device(host.base);
  DeviceFp8Pools pools(host, device);
  for (const char* policy : {"off", "on:1", "on:2+evict_last", "auto"}) {
    SCOPED_TRACE(policy);
    device.poison_output();
    paged_v1_decode(pools.params, parse_prefetch_policy(policy), nullptr);
    EXPECT_TRUE(testing::rows_match(device.download_output(), reference, c.head_dim, c.num_q_heads,
                                    c.dtype, policy));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Fp8Decode,
    ::testing::Values(Fp8Param{DType::kBFloat16, 128, 4, 16, KvLayout::kHND, 2.f},
                      Fp8Param{DType::kBFloat16, 128, 4, 16, KvLayout::kHND, 24.f},
                      Fp8Param{DType::kFloat16, 128, 8, 64, KvLayout::kNHD, 2.f},
                      Fp8Param{DType::kFloat16, 64, 1, 32, KvLayout::kHND, 24.f},
                      Fp8Param{DType::kBFloat16, 64, 7, 16, KvLayout::kNHD, 2.f},
                      Fp8Param{DType::kBFloat16, 128, 1, 64, KvLayout::kNHD, 24.f}));

TEST(Fp8KvCache, LongContextSplitAcrossManyBlocks) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;  // Llama-3-8B heads
  c.seq_lens = {testing::quick_mode() ? 4097 : 32769, 4095, 63, 65};
  Fp8Problem host(c, 1.f / 32, 1.f / 32);
  const auto reference = decode_attention_reference(host.host_params());
  DeviceDecodeProblem device(host.base);
  DeviceFp8Pools pools(host, device);
  SplitDecode split;
  device.poison_output();
  split.plan(pools.params, c.seq_lens, nullptr);
  split.run(pools.params, PrefetchPolicy::off(), nullptr);
  EXPECT_TRUE(testing::rows_match(device.download_output(), reference, c.head_dim, c.num_q_heads,
                                  c.dtype, "fp8"));
}

// paged_v1 past its single pass (48K tokens): partitions and the reduce read the stored bytes
// and apply the scales as the single pass does, at 64K and 130K tokens and on both sides of a
// partition boundary.
TEST(Fp8KvCache, PagedV1PartitionsAt64KAnd130K) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.num_q_heads = 8;  // few heads: the reference's cost grows with heads x length
  c.num_kv_heads = 2;
  c.seed = 53;
  c.seq_lens = testing::quick_mode() ? std::vector<int32_t>{49153, 4097}
                                     : std::vector<int32_t>{65536, 133120, 4097};
  c.needle_positions = {0, kPagedV1PartitionTokens - 1, kPagedV1PartitionTokens, -1};
  for (const float q_scale : {2.f, testing::kPeakedQScale}) {
    c.q_scale = q_scale;
    if (q_scale != 2.f) c.needle_positions.clear();
    Fp8Problem host(c, 1.f / 32, 1.f / 16);
    const auto reference = decode_attention_reference(host.host_params());
    DeviceDecodeProblem device(host.base);
    DeviceFp8Pools pools(host, device);
    DecodeAttentionParams params = pools.params;
    params.max_seq_len = 131072 + kPagedV1PartitionTokens;  // an engine-style bound
    PagedV1Decode v1;
    v1.reserve(params.kv.batch_size, params.num_q_heads, params.kv.head_dim, params.max_seq_len);
    for (const char* policy : {"off", "on:1", "auto"}) {
      SCOPED_TRACE(policy);
      device.poison_output();
      v1.run(params, parse_prefetch_policy(policy), nullptr);
      EXPECT_TRUE(testing::rows_match(
          device.download_output(), reference, c.head_dim, c.num_q_heads, c.dtype,
          std::string(policy) + (q_scale == 2.f ? "/flat" : "/peaked")));
    }
  }
}

TEST(Fp8KvCache, PrefillReadsStoredKvWithScales) {
  L2KV_SKIP_WITHOUT_GPU();
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    DecodeProblemConfig c;
    c.dtype = dtype;
    c.num_q_heads = 8;
    c.num_kv_heads = 2;
    c.seq_lens = {1, 65, 300, 129};
    c.seed = 77;
    Fp8Problem host(c, 1.f / 48, 1.f / 8);
    // Every token of every sequence is a query row over its own prefix (a whole-prompt chunk).
    std::vector<PrefillChunk> chunks;
    std::vector<uint16_t> q;
    std::mt19937 rng(9);
    std::uniform_real_distribution<float> uniform(-2.f, 2.f);
    int32_t rows = 0;
    for (int32_t s = 0; s < static_cast<int32_t>(c.seq_lens.size()); ++s) {
      chunks.push_back({s, rows, c.seq_lens[s], 0});
      rows += c.seq_lens[s];
    }
    q.resize(static_cast<size_t>(rows) * c.num_q_heads * c.head_dim);
    for (auto& x : q) x = float_to_dtype_bits(dtype, uniform(rng));
    const testing::PrefillRows row_view = testing::prefill_rows(host.base, chunks);
    const auto reference =
        decode_attention_reference(row_view.reference_params(host.host_params(), q.data()));

    DeviceDecodeProblem device(host.base);
    DeviceFp8Pools pools(host, device);
    void* q_d = nullptr;
    void* out_d = nullptr;
    L2KV_CUDA_CHECK(cudaMalloc(&q_d, q.size() * 2));
    L2KV_CUDA_CHECK(cudaMalloc(&out_d, q.size() * 2));
    L2KV_CUDA_CHECK(cudaMemcpy(q_d, q.data(), q.size() * 2, cudaMemcpyHostToDevice));
    L2KV_CUDA_CHECK(cudaMemset(out_d, 0xff, q.size() * 2));
    PrefillAttention prefill;
    prefill.reserve(rows, static_cast<int32_t>(chunks.size()), c.num_kv_heads, c.num_q_heads);
    prefill.plan(pools.params.kv, c.num_q_heads, chunks, nullptr);
    prefill.run(q_d, out_d, pools.params.kv, c.num_q_heads,
                1.f / std::sqrt(static_cast<float>(c.head_dim)), nullptr);
    std::vector<uint16_t> bits(q.size());
    L2KV_CUDA_CHECK(cudaMemcpy(bits.data(), out_d, q.size() * 2, cudaMemcpyDeviceToHost));
    cudaFree(q_d);
    cudaFree(out_d);
    std::vector<float> out(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) out[i] = dtype_bits_to_float(dtype, bits[i]);
    EXPECT_TRUE(testing::rows_match(out, reference, c.head_dim, c.num_q_heads, dtype, "fp8"));
  }
}

TEST(Fp8KvCache, RopeKernelStoresTheHostQuantization) {
  L2KV_SKIP_WITHOUT_GPU();
  // Position 0: RoPE is the identity, so the stored bytes must equal E4M3(value / scale).
  DecodeProblemConfig c;
  c.seq_lens = {40, 17, 64};
  Fp8Problem host(c, 1.f / 40, 1.f / 3);
  DeviceDecodeProblem device(host.base);
  DeviceFp8Pools pools(host, device);
  const PagedKvCache& kv = pools.params.kv;
  const int32_t d = c.head_dim, q_dim = c.num_q_heads * d, kv_dim = c.num_kv_heads * d;
  const int32_t tokens = 3;
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> uniform(-3.f, 3.f);
  std::vector<uint16_t> qkv(static_cast<size_t>(tokens) * (q_dim + 2 * kv_dim));
  for (auto& x : qkv) x = float_to_dtype_bits(c.dtype, uniform(rng));
  const std::vector<int32_t> positions(tokens, 0);
  const std::vector<int32_t> slots = {
      host.base.block_table[0] * c.block_size + 5,
      host.base.block_table[host.base.max_blocks_per_seq] * c.block_size,
      -1};  // a pad row writes nothing
  uint16_t* qkv_d = testing::upload(qkv);
  int32_t* pos_d = testing::upload(positions);
  int32_t* slots_d = testing::upload(slots);
  float* freq_d = testing::upload(std::vector<float>(d / 2, 1.f));
  void* q_out = nullptr;
  L2KV_CUDA_CHECK(cudaMalloc(&q_out, static_cast<size_t>(tokens) * q_dim * 2));
  ops::rope_and_cache(qkv_d, nullptr, pos_d, slots_d, freq_d, tokens, c.num_q_heads, kv, q_out,
                      nullptr);
  std::vector<uint8_t> k_after(host.k8.size()), v_after(host.v8.size());
  L2KV_CUDA_CHECK(cudaMemcpy(k_after.data(), pools.k, k_after.size(), cudaMemcpyDeviceToHost));
  L2KV_CUDA_CHECK(cudaMemcpy(v_after.data(), pools.v, v_after.size(), cudaMemcpyDeviceToHost));
  std::vector<uint8_t> k_expected = host.k8, v_expected = host.v8;
  for (int32_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    const uint16_t* row = qkv.data() + static_cast<size_t>(t) * (q_dim + 2 * kv_dim);
    for (int32_t h = 0; h < c.num_kv_heads; ++h)
      for (int32_t i = 0; i < d; ++i) {
        const int64_t off = kv.offset(slots[t] / c.block_size, slots[t] % c.block_size, h) + i;
        const float k = dtype_bits_to_float(c.dtype, row[q_dim + h * d + i]);
        const float v = dtype_bits_to_float(c.dtype, row[q_dim + kv_dim + h * d + i]);
        k_expected[off] = float_to_fp8_e4m3_bits(k * (1.f / host.k_scale));
        v_expected[off] = float_to_fp8_e4m3_bits(v * (1.f / host.v_scale));
      }
  }
  EXPECT_TRUE(k_after == k_expected);
  EXPECT_TRUE(v_after == v_expected);
  for (void* p : std::initializer_list<void*>{qkv_d, pos_d, slots_d, freq_d, q_out}) cudaFree(p);
}

}  // namespace
}  // namespace l2kv
