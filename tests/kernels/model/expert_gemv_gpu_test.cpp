// The mixture-of-experts projections on the GPU (moe.h): moe_group's slot lists feeding
// expert_gemv and expert_gemv_silu_mul, against a double-precision host reference on random
// inputs, bf16 and fp16, outputs poisoned with NaN first. Cases: Qwen3-30B-A3B's expert shapes
// at 1, 3 and 64 tokens; a few experts with many slots each (several 8-slot passes); odd shapes
// (features that end inside a 16-feature tile, `in` that ends inside an iteration or holds one
// vector); more experts given room (max_active) than chosen. The fused SiLU x up must give the
// bits of expert_gemv followed by gated_mul, the chain it replaces.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/device_array.h"
#include "l2kv/core/dtype.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/model/moe.h"
#include "l2kv/kernels/random_fill.h"

namespace l2kv {
namespace {

struct Case {
  const char* name;
  int32_t experts, top_k, tokens;
  int64_t in, inter;  // gate_up: in -> 2 inter; down: inter -> in
};

const std::vector<Case> kCases = {
    {"qwen3-moe 1 token", 128, 8, 1, 2048, 768},
    {"qwen3-moe 3 tokens", 128, 8, 3, 2048, 768},
    {"qwen3-moe 64 tokens", 128, 8, 64, 2048, 768},
    {"4 experts, 20 slots each", 4, 2, 40, 256, 64},
    {"odd features", 6, 2, 9, 24, 24},
    {"one vector of in", 5, 3, 4, 8, 40},
    {"in ends mid-iteration", 8, 2, 12, 1032, 104},
};

std::vector<float> download_values(DType dtype, const uint16_t* device, size_t n) {
  std::vector<uint16_t> bits(n);
  L2KV_CUDA_CHECK(cudaMemcpy(bits.data(), device, n * 2, cudaMemcpyDeviceToHost));
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = dtype_bits_to_float(dtype, bits[i]);
  return v;
}

// x[rows][in] . W[e][out][in]^T for one slot, row `row` of x and output feature f, with the
// sum of the products' magnitudes (what fp32 rounding noise scales with).
struct Dot {
  double sum = 0, magnitude = 0;
};
Dot dot(const std::vector<float>& x, int64_t row, const std::vector<float>& w, int64_t e, int64_t f,
        int64_t out, int64_t in) {
  Dot d;
  const float* xr = x.data() + row * in;
  const float* wr = w.data() + (e * out + f) * in;
  for (int64_t k = 0; k < in; ++k) {
    const double p = static_cast<double>(xr[k]) * wr[k];
    d.sum += p;
    d.magnitude += std::abs(p);
  }
  return d;
}

// |got - ref| <= atol + rtol |ref|: fp32 accumulation-order noise, 64 fp32 epsilons of the
// products' summed magnitude (the GEMV test's 64 eps x in / 3 for products of size 1/3; the down
// projection's inputs are SiLU x up activations of size ~100, whose sums cancel to far smaller
// outputs), and twice the output's half-ulp.
bool within(double got, const Dot& ref, DType dtype) {
  const double atol = 64 * 0x1p-24 * ref.magnitude + 1e-6;
  const double rtol = dtype == DType::kBFloat16 ? 0x1p-8 : 0x1p-10;
  return std::abs(got - ref.sum) <= atol + rtol * std::abs(ref.sum);
}

class ExpertGemv : public ::testing::TestWithParam<DType> {};

TEST_P(ExpertGemv, MatchesHostReferenceAndTheGatedMulChain) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  cudaStream_t stream = nullptr;
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  uint64_t seed = 11;
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::string(c.name) + " " + std::string(dtype_name(dtype)));
    ++seed;
    const int32_t slots = c.tokens * c.top_k;
    const int64_t E = c.experts, I = c.inter, H = c.in;
    // Each token's top_k distinct experts, drawn at random.
    std::mt19937_64 rng(seed);
    std::vector<int32_t> experts(static_cast<size_t>(slots));
    std::vector<int32_t> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    for (int32_t t = 0; t < c.tokens; ++t) {
      std::shuffle(order.begin(), order.end(), rng);
      for (int32_t j = 0; j < c.top_k; ++j) experts[t * c.top_k + j] = order[j];
    }
    DeviceArray<uint16_t> w_gate_up(static_cast<size_t>(E * 2 * I * H));
    DeviceArray<uint16_t> w_down(static_cast<size_t>(E * H * I));
    fill_random(w_gate_up.ptr, E * 2 * I * H, dtype, 1.f, seed * 3, nullptr);
    fill_random(w_down.ptr, E * H * I, dtype, 1.f, seed * 3 + 1, nullptr);
    std::vector<uint16_t> x_bits(static_cast<size_t>(c.tokens * H));
    std::uniform_real_distribution<float> uniform(-1.f, 1.f);
    for (auto& b : x_bits) b = float_to_dtype_bits(dtype, uniform(rng));
    int32_t* d_experts = testing::upload(experts);
    uint16_t* x = testing::upload(x_bits);
    const std::unique_ptr<int32_t, cudaError_t (*)(void*)> experts_owner(d_experts, cudaFree);
    const std::unique_ptr<uint16_t, cudaError_t (*)(void*)> x_owner(x, cudaFree);
    DeviceArray<int32_t> first(static_cast<size_t>(E + 1)), by_expert(static_cast<size_t>(slots)),
        active(static_cast<size_t>(E + 1));
    // Room for every expert, more than min(experts, slots) when slots < experts: the blocks
    // past the chosen ones must do nothing.
    const auto max_active = static_cast<int32_t>(E);
    DeviceArray<uint16_t> gate_up(static_cast<size_t>(slots * 2 * I)),
        act(static_cast<size_t>(slots * I)), chain_act(static_cast<size_t>(slots * I)),
        y(static_cast<size_t>(slots * H));
    L2KV_CUDA_CHECK(cudaMemset(gate_up.ptr, 0xff, size_t(slots) * 2 * I * 2));  // NaN
    L2KV_CUDA_CHECK(cudaMemset(act.ptr, 0xff, size_t(slots) * I * 2));
    L2KV_CUDA_CHECK(cudaMemset(chain_act.ptr, 0xff, size_t(slots) * I * 2));
    L2KV_CUDA_CHECK(cudaMemset(y.ptr, 0xff, size_t(slots) * H * 2));
    // The chain runs on a stream of its own (programmatic dependent launch takes effect there,
    // not on the legacy default stream), after the fills and uploads.
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());
    ops::moe_group(d_experts, slots, static_cast<int32_t>(E), first.ptr, by_expert.ptr, active.ptr,
                   stream);
    ops::expert_gemv(dtype, x, c.top_k, first.ptr, by_expert.ptr, active.ptr, max_active,
                     w_gate_up.ptr, 2 * I, H, gate_up.ptr, stream);
    ops::gated_mul(dtype, gate_up.ptr, slots, static_cast<int32_t>(I), chain_act.ptr, stream);
    ops::expert_gemv_silu_mul(dtype, x, c.top_k, first.ptr, by_expert.ptr, active.ptr, max_active,
                              w_gate_up.ptr, I, H, act.ptr, stream);
    // down over the fused activations (x of slot s is row s: one slot per row), launched as the
    // model does, early under programmatic dependent launch while the kernel ahead drains.
    ops::expert_gemv(dtype, act.ptr, 1, first.ptr, by_expert.ptr, active.ptr, max_active,
                     w_down.ptr, H, I, y.ptr, stream, /*pdl=*/true);
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());

    const std::vector<float> xv = download_values(dtype, x, x_bits.size());
    const std::vector<float> wgu = download_values(dtype, w_gate_up.ptr, E * 2 * I * H);
    const std::vector<float> wd = download_values(dtype, w_down.ptr, E * H * I);
    const std::vector<float> got_gu = download_values(dtype, gate_up.ptr, slots * 2 * I);
    const std::vector<float> got_act = download_values(dtype, act.ptr, slots * I);
    const std::vector<float> got_chain = download_values(dtype, chain_act.ptr, slots * I);
    const std::vector<float> got_y = download_values(dtype, y.ptr, slots * H);

    // gate_up against the reference; the fused form bit for bit against the chain.
    int64_t bad = 0, chain_diffs = 0;
    for (int32_t s = 0; s < slots; ++s)
      for (int64_t f = 0; f < 2 * I; ++f) {
        const Dot r = dot(xv, s / c.top_k, wgu, experts[s], f, 2 * I, H);
        const double v = got_gu[s * 2 * I + f];
        if (!within(v, r, dtype) && bad++ < 3)
          ADD_FAILURE() << "gate_up slot " << s << " feature " << f << ": " << v << " vs " << r.sum;
      }
    for (int64_t i = 0; i < slots * I; ++i)
      if (!(got_act[i] == got_chain[i]) && chain_diffs++ < 3)
        ADD_FAILURE() << "fused SiLU x up element " << i << ": " << got_act[i] << " vs the chain's "
                      << got_chain[i];
    EXPECT_EQ(bad, 0) << "gate_up outside tolerance";
    EXPECT_EQ(chain_diffs, 0) << "expert_gemv_silu_mul differs from expert_gemv + gated_mul";

    // down of the GPU's activations against the reference over those same activations.
    bad = 0;
    for (int32_t s = 0; s < slots; ++s)
      for (int64_t f = 0; f < H; ++f) {
        const Dot r = dot(got_act, s, wd, experts[s], f, H, I);
        const double v = got_y[s * H + f];
        if (!within(v, r, dtype) && bad++ < 3)
          ADD_FAILURE() << "down slot " << s << " feature " << f << ": " << v << " vs " << r.sum;
      }
    EXPECT_EQ(bad, 0) << "down outside tolerance";
  }
  L2KV_CUDA_CHECK(cudaStreamDestroy(stream));
}

// The tolerance above is tight enough to matter: a 1 % scale error of the reference, or one
// 8-wide k vector of W left out, fails it on Qwen3-MoE's gate_up shape.
TEST(ExpertGemvTolerance, CatchesAScaleErrorAndADroppedVector) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  const int64_t in = 2048;
  int scale_caught = 0, drop_caught = 0;
  constexpr int kTrials = 200;
  for (int trial = 0; trial < kTrials; ++trial) {
    Dot ref;
    double dropped = 0;
    for (int64_t k = 0; k < in; ++k) {
      const double p = uniform(rng) * uniform(rng);
      ref.sum += p;
      ref.magnitude += std::abs(p);
      if (k < 8) dropped += p;
    }
    scale_caught += !within(1.01 * ref.sum, ref, DType::kBFloat16);
    drop_caught += !within(ref.sum - dropped, ref, DType::kBFloat16);
  }
  EXPECT_GT(scale_caught, kTrials * 3 / 4);
  EXPECT_GT(drop_caught, kTrials * 3 / 4);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ExpertGemv, ::testing::Values(DType::kBFloat16, DType::kFloat16),
                         [](const auto& param_info) {
                           return std::string(dtype_name(param_info.param));
                         });

}  // namespace
}  // namespace l2kv
