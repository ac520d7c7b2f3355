// The ops around the projections (add + RMSNorm, SiLU x up, RoPE + paged KV write, with
// Qwen3's per-head q/k RMSNorm, and the calculated fp8 KV scales) against a
// host reference that performs the same float operations and roundings: random inputs (never
// zeros), ragged row counts, shuffled slots with pad rows, outputs and pools poisoned first.
// Outputs are compared bit by bit: at most 1 % of the elements may differ, each by at most one
// unit in the last place (a sum or a sincos taken in another order flips a rounding now and
// then; a 1 % scale error, a dropped term or a shifted element moves almost every element by
// more than that).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/model/kv_scales.h"
#include "l2kv/kernels/model/model_ops.h"

namespace l2kv {
namespace {

using testing::upload;

constexpr uint16_t kPoison16 = 0xffff;  // NaN in bf16 and fp16
constexpr uint8_t kPoison8 = 0x7f;      // NaN in E4M3

float to_float(DType t, uint16_t bits) {
  return dtype_bits_to_float(t, bits);
}
uint16_t round_to(DType t, float f) {
  return float_to_dtype_bits(t, f);
}

// Relative size of one unit in the last place: 2^-7 (bf16), 2^-10 (fp16), 2^-3 (E4M3).
double ulp_bound(double ref, double relative_ulp, double smallest_step) {
  return std::max(std::fabs(ref) * relative_ulp, smallest_step) * 1.0001;
}

struct Mismatches {
  int64_t differing = 0, beyond_one_ulp = 0, total = 0;
  std::string first_beyond;
};

template <typename Decode>
void count(Mismatches& m, int64_t index, uint32_t got, uint32_t want, Decode decode,
           double relative_ulp, double smallest_step) {
  ++m.total;
  if (got == want) return;
  ++m.differing;
  const double g = decode(got), w = decode(want);
  if (!std::isfinite(g) || std::fabs(g - w) > ulp_bound(w, relative_ulp, smallest_step)) {
    if (m.beyond_one_ulp++ == 0)
      m.first_beyond = "element " + std::to_string(index) + ": got " + std::to_string(g) +
                       ", want " + std::to_string(w);
  }
}

::testing::AssertionResult acceptable(const Mismatches& m) {
  if (m.total == 0) return ::testing::AssertionFailure() << "nothing compared";
  if (m.beyond_one_ulp > 0)
    return ::testing::AssertionFailure()
           << m.beyond_one_ulp << " of " << m.total << " elements off by more than one ulp; "
           << m.first_beyond;
  if (m.differing * 100 > m.total)
    return ::testing::AssertionFailure()
           << m.differing << " of " << m.total << " elements differ by one ulp (over 1 %)";
  return ::testing::AssertionSuccess();
}

double relative_ulp(DType t) {
  return t == DType::kFloat16 ? 0x1p-10 : 0x1p-7;
}
double smallest_step(DType t) {
  return t == DType::kFloat16 ? 0x1p-24 : 0x1p-133;
}

// `absolute_floor`: the smallest difference always allowed, for results that cancel (RoPE's
// a cos - b sin near zero carries the float rounding of its terms, not of itself).
Mismatches compare16(DType t, const std::vector<uint16_t>& got, const std::vector<uint16_t>& want,
                     double absolute_floor = 0) {
  Mismatches m;
  for (size_t i = 0; i < want.size(); ++i)
    count(
        m, static_cast<int64_t>(i), got[i], want[i],
        [t](uint32_t b) { return to_float(t, static_cast<uint16_t>(b)); }, relative_ulp(t),
        std::max(smallest_step(t), absolute_floor));
  return m;
}

// Float rounding of RoPE's two products (terms up to 2.5, unit roundoff 2^-24), doubled.
constexpr double kRopeAbsoluteFloor = 2 * 2.5 * 0x1p-24 * 2;

std::vector<uint16_t> random16(DType t, size_t n, float lo, float hi, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<uint16_t> v(n);
  for (auto& x : v) {
    float f = d(rng);
    if (std::fabs(f) < 1e-3f) f = 1e-3f;  // never zero
    x = round_to(t, f);
  }
  return v;
}

template <typename T>
std::vector<T> download(const T* p, size_t n) {
  std::vector<T> v(n);
  L2KV_CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

class ModelOps : public ::testing::TestWithParam<DType> {};

TEST_P(ModelOps, AddRmsNormMatchesHostReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(11);
  // Widths of the supported models, a wide one, and ones that take the strided kernel.
  // 1032: 129 vectors, split unevenly over the blocks of a row's cluster at few rows; 12288: two
  // blocks per row even at many rows.
  for (const int32_t hidden : {4096, 3584, 5120, 8192, 12288, 1032, 24, 8, 4100, 37}) {
    for (const int32_t rows : {1, 7, 64, 130}) {
      for (const bool with_add : {false, true}) {
        const size_t n = static_cast<size_t>(rows) * hidden;
        std::vector<float> residual(n);
        std::uniform_real_distribution<float> d(-3.f, 3.f);
        for (auto& x : residual) x = d(rng);
        const auto add = random16(t, n, -2.f, 2.f, rng);
        const auto weight = random16(t, hidden, 0.2f, 1.8f, rng);
        const float eps = 1e-5f;

        std::vector<float> want_residual = residual;
        std::vector<uint16_t> want_out(n);
        for (int32_t r = 0; r < rows; ++r) {
          double sum = 0;
          for (int32_t i = 0; i < hidden; ++i) {
            float& x = want_residual[static_cast<size_t>(r) * hidden + i];
            if (with_add) x += to_float(t, add[static_cast<size_t>(r) * hidden + i]);
            sum += static_cast<double>(x) * x;
          }
          // The kernel's __frsqrt_rn is correctly rounded, as this is.
          const float scale = static_cast<float>(
              1.0 / std::sqrt(static_cast<double>(static_cast<float>(sum / hidden) + eps)));
          for (int32_t i = 0; i < hidden; ++i) {
            const size_t at = static_cast<size_t>(r) * hidden + i;
            want_out[at] = round_to(t, to_float(t, weight[i]) * (want_residual[at] * scale));
          }
        }

        float* d_residual = upload(residual);
        uint16_t* d_add = upload(add);
        uint16_t* d_weight = upload(weight);
        uint16_t* d_out = upload(std::vector<uint16_t>(n, kPoison16));
        ops::add_rmsnorm(t, d_residual, with_add ? d_add : nullptr, d_weight, eps, rows, hidden,
                         d_out, nullptr);
        L2KV_CUDA_CHECK(cudaDeviceSynchronize());
        const auto got_out = download(d_out, n);
        const auto got_residual = download(d_residual, n);
        for (void* p : {static_cast<void*>(d_residual), static_cast<void*>(d_add),
                        static_cast<void*>(d_weight), static_cast<void*>(d_out)})
          cudaFree(p);

        const std::string where = "hidden " + std::to_string(hidden) + " rows " +
                                  std::to_string(rows) + (with_add ? " with add" : "");
        EXPECT_EQ(got_residual, want_residual) << where;
        EXPECT_TRUE(acceptable(compare16(t, got_out, want_out))) << where;
      }
    }
  }
}

// Gemma 3's form: the addend RMS-normalized with its own weight before it joins the residual
// (residual += RMSNorm(add) * add_weight), then the usual norm; vectorized and strided widths.
TEST_P(ModelOps, AddRmsNormOfANormalizedAddendMatchesHostReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(13);
  for (const int32_t hidden : {5376, 3840, 256, 37}) {
    // The 1 % rule over every row count of this width: the residual's float rounding flips an
    // output's last bit now and then (estimated under 0.2 %), and a single flip among the 37
    // outputs of one row of width 37 would already be over 1 %.
    Mismatches all_rows;
    for (const int32_t rows : {1, 9, 64}) {
      const size_t n = static_cast<size_t>(rows) * hidden;
      std::vector<float> residual(n);
      std::uniform_real_distribution<float> d(-3.f, 3.f);
      for (auto& x : residual) x = d(rng);
      const auto add = random16(t, n, -20.f, 20.f, rng);  // far from unit RMS: the norm shows
      const auto add_weight = random16(t, hidden, 0.5f, 1.5f, rng);
      const auto weight = random16(t, hidden, 0.2f, 1.8f, rng);
      const float eps = 1e-6f;
      std::vector<float> want_residual = residual;
      for (int32_t r = 0; r < rows; ++r) {
        const size_t row = static_cast<size_t>(r) * hidden;
        double add_sum = 0;
        for (int32_t i = 0; i < hidden; ++i) {
          const double a = to_float(t, add[row + i]);
          add_sum += a * a;
        }
        const double add_scale = 1.0 / std::sqrt(add_sum / hidden + eps);
        for (int32_t i = 0; i < hidden; ++i)
          want_residual[row + i] =
              static_cast<float>(want_residual[row + i] + to_float(t, add[row + i]) * add_scale *
                                                              to_float(t, add_weight[i]));
      }
      float* d_residual = upload(residual);
      uint16_t* d_add = upload(add);
      uint16_t* d_add_weight = upload(add_weight);
      uint16_t* d_weight = upload(weight);
      uint16_t* d_out = upload(std::vector<uint16_t>(n, kPoison16));
      ops::add_rmsnorm(t, d_residual, d_add, d_weight, eps, rows, hidden, d_out, nullptr, false, {},
                       d_add_weight);
      L2KV_CUDA_CHECK(cudaDeviceSynchronize());
      const auto got_out = download(d_out, n);
      const auto got_residual = download(d_residual, n);
      for (void* p : {static_cast<void*>(d_residual), static_cast<void*>(d_add),
                      static_cast<void*>(d_add_weight), static_cast<void*>(d_weight),
                      static_cast<void*>(d_out)})
        cudaFree(p);
      const std::string where =
          "hidden " + std::to_string(hidden) + " rows " + std::to_string(rows);
      // fp32 sums in another order: a few ulps of the residual. Not std::max, which would drop
      // a NaN.
      constexpr double kResidualBound = 1e-5;
      double worst = 0;
      for (size_t i = 0; i < n; ++i) {
        const double e = std::abs(static_cast<double>(got_residual[i]) - want_residual[i]) /
                         (std::abs(want_residual[i]) + 1.0);
        if (!(e <= worst) && !std::isnan(worst)) worst = e;
      }
      EXPECT_LT(worst, kResidualBound) << where;
      // The norm of the host's residual, not the kernel's (a wrong stored residual would carry
      // its own reference). The residual bound lets the kernel's stored one differ by up to
      // kResidualBound x (|r| + 1), which moves an output by up to weight x scale x that: the
      // floor of every element, so a residual near zero does not turn float rounding into more
      // than one 16-bit ulp. Below one ulp of all but the smallest outputs, so a 1 % scale error
      // still shows.
      std::vector<uint16_t> want_out(n);
      double max_scale = 0;
      for (int32_t r = 0; r < rows; ++r) {
        const size_t row = static_cast<size_t>(r) * hidden;
        double sum = 0;
        for (int32_t i = 0; i < hidden; ++i)
          sum += static_cast<double>(want_residual[row + i]) * want_residual[row + i];
        const float scale = static_cast<float>(
            1.0 / std::sqrt(static_cast<double>(static_cast<float>(sum / hidden) + eps)));
        max_scale = std::max(max_scale, static_cast<double>(scale));
        for (int32_t i = 0; i < hidden; ++i)
          want_out[row + i] =
              round_to(t, to_float(t, weight[i]) * (want_residual[row + i] * scale));
      }
      // Weights are below 1.8; 2: margin.
      const double out_floor = 1.8 * max_scale * kResidualBound * 2;
      const Mismatches m = compare16(t, got_out, want_out, out_floor);
      EXPECT_EQ(m.beyond_one_ulp, 0) << where << ": " << m.first_beyond;
      all_rows.differing += m.differing;
      all_rows.beyond_one_ulp += m.beyond_one_ulp;
      all_rows.total += m.total;
    }
    EXPECT_TRUE(acceptable(all_rows)) << "hidden " << hidden;
  }
}

// gated_mul with `activation` against `reference(g, u)` on the host, rounded once to the
// dtype, for every (inter, rows) pair on fresh random gates and ups in +-6.
template <typename Reference>
void check_gated_mul(DType t, ops::GateActivation activation, std::initializer_list<int32_t> inters,
                     std::initializer_list<int32_t> row_counts, uint64_t seed,
                     Reference reference) {
  std::mt19937_64 rng(seed);
  for (const int32_t inter : inters) {
    for (const int32_t rows : row_counts) {
      const size_t n = static_cast<size_t>(rows) * inter;
      const auto gate_up = random16(t, 2 * n, -6.f, 6.f, rng);
      std::vector<uint16_t> want(n);
      for (int32_t r = 0; r < rows; ++r)
        for (int32_t i = 0; i < inter; ++i) {
          const float g = to_float(t, gate_up[static_cast<size_t>(r) * 2 * inter + i]);
          const float u = to_float(t, gate_up[static_cast<size_t>(r) * 2 * inter + inter + i]);
          want[static_cast<size_t>(r) * inter + i] = round_to(t, reference(g, u));
        }
      uint16_t* d_in = upload(gate_up);
      uint16_t* d_out = upload(std::vector<uint16_t>(n, kPoison16));
      ops::gated_mul(t, d_in, rows, inter, d_out, nullptr, false, false, activation);
      L2KV_CUDA_CHECK(cudaDeviceSynchronize());
      const auto got = download(d_out, n);
      cudaFree(d_in);
      cudaFree(d_out);
      EXPECT_TRUE(acceptable(compare16(t, got, want))) << "inter " << inter << " rows " << rows;
    }
  }
}

// GeGLU (Gemma): GELU's tanh form of the gate times up, against the tanh form in double. (The
// kernel's first form, 0.5 g (1 + tanhf(y)) in float as PyTorch computes it, put 10-14 % of the
// 16-bit outputs one ulp off here: 1 + tanh cancels for gates below about -4.)
TEST_P(ModelOps, GeluMulMatchesHostReference) {
  L2KV_SKIP_WITHOUT_GPU();
  check_gated_mul(GetParam(), ops::GateActivation::kGeluTanh, {21504, 15360, 13}, {1, 9}, 14,
                  [](double g, double u) {
                    const double gelu =
                        0.5 * g *
                        (1.0 + std::tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
                    return static_cast<float>(gelu * u);
                  });
}

TEST_P(ModelOps, SiluMulMatchesHostReference) {
  L2KV_SKIP_WITHOUT_GPU();
  check_gated_mul(GetParam(), ops::GateActivation::kSilu, {14336, 18944, 11008, 8, 2056, 100, 13},
                  {1, 5, 64, 129}, 12,
                  [](float g, float u) { return g / (1.f + std::exp(-g)) * u; });
}

// A step of more tokens than gridDim.y holds (65,535): the op launches in slices; the last
// slice's rows must be as right as the first's.
TEST_P(ModelOps, SiluMulTakesMoreRowsThanOneGridColumn) {
  L2KV_SKIP_WITHOUT_GPU();
  check_gated_mul(GetParam(), ops::GateActivation::kSilu, {16, 13}, {65535 + 4000}, 15,
                  [](float g, float u) { return g / (1.f + std::exp(-g)) * u; });
}

// weighted_silu_mul: a float32 gate_up product of a weighted x, each row scaled by its RMSNorm
// 1 / rms from a sum of squares, against the host doing the same float operations (the scale in
// double, then float: the kernel's rsqrt is correctly rounded), in both layouts, at 1-16 rows
// (the fused layer's) and at a row count no test of the layer reaches; the next accumulator is
// cleared for the rows and the sums read are left as they were.
TEST_P(ModelOps, WeightedSiluMulMatchesHostReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(21);
  std::uniform_real_distribution<float> product_values(-300.f, 300.f);
  std::uniform_real_distribution<float> mean_squares(50.f, 4000.f);
  constexpr int32_t kWidth = 4096;
  constexpr float kEps = 1e-5f;
  for (const bool interleaved : {false, true}) {
    for (const int32_t inter : {14336, 8, 1000}) {
      for (const int32_t rows : {1, 7, 16, 200}) {
        const size_t n = static_cast<size_t>(rows) * inter;
        std::vector<float> product(2 * n);
        std::vector<RowSumsq> sumsq(static_cast<size_t>(rows));  // fixed point (row_sumsq.h)
        for (float& p : product) p = product_values(rng);
        for (RowSumsq& q : sumsq) q = to_row_sumsq(mean_squares(rng) * kWidth);
        std::vector<uint16_t> want(n);
        for (int32_t r = 0; r < rows; ++r) {
          const auto scale = static_cast<float>(
              1.0 / std::sqrt(static_cast<double>(
                        row_sumsq_value(sumsq[static_cast<size_t>(r)]) / kWidth + kEps)));
          const float* row = product.data() + static_cast<size_t>(r) * 2 * inter;
          for (int32_t i = 0; i < inter; ++i) {
            const int32_t gate_col = interleaved ? i / 8 * 16 + i % 8 : i;
            const int32_t up_col = interleaved ? gate_col + 8 : inter + i;
            const float g = to_float(t, round_to(t, row[gate_col] * scale));
            const float u = to_float(t, round_to(t, row[up_col] * scale));
            want[static_cast<size_t>(r) * inter + i] = round_to(t, g / (1.f + std::exp(-g)) * u);
          }
        }
        float* d_product = upload(product);
        RowSumsq* d_sumsq = upload(sumsq);
        RowSumsq* d_clear = upload(std::vector<RowSumsq>(static_cast<size_t>(rows), 7));
        uint16_t* d_out = upload(std::vector<uint16_t>(n, kPoison16));
        const ops::RowRmsScale rms{d_sumsq, d_clear, kWidth, kEps};
        ops::weighted_silu_mul(t, d_product, rms, rows, inter, d_out, nullptr, false, interleaved);
        L2KV_CUDA_CHECK(cudaDeviceSynchronize());
        const auto got = download(d_out, n);
        const auto cleared = download(d_clear, static_cast<size_t>(rows));
        const auto sums_after = download(d_sumsq, static_cast<size_t>(rows));
        cudaFree(d_product);
        cudaFree(d_sumsq);
        cudaFree(d_clear);
        cudaFree(d_out);
        const std::string where = std::string(interleaved ? "interleaved" : "halves") + " inter " +
                                  std::to_string(inter) + " rows " + std::to_string(rows);
        EXPECT_TRUE(acceptable(compare16(t, got, want))) << where;
        EXPECT_EQ(cleared, std::vector<RowSumsq>(static_cast<size_t>(rows), 0)) << where;
        EXPECT_EQ(sums_after, sumsq) << where;
      }
    }
  }
  float* f = nullptr;
  static const RowSumsq one_row[1] = {0};
  EXPECT_THROW(ops::weighted_silu_mul(t, f, {one_row, nullptr, kWidth, kEps}, 1, 12, f, nullptr),
               Error);  // not a multiple of 8
  EXPECT_THROW(ops::weighted_silu_mul(t, f, {nullptr, nullptr, kWidth, kEps}, 1, 16, f, nullptr),
               Error);  // no sums of squares
}

struct RopeCase {
  int32_t head_dim, q_heads, kv_heads, rows;
  KvLayout layout;
  bool fp8, bias, qk_norm;
};

// What a RoPE test case runs on besides qkv: random positions, slots shuffled over a pool of
// `num_blocks` blocks (every fifth row from the fourth a pad row, slot -1), the inverse
// frequencies of `theta`, and the pool's descriptor (its pointers unset).
struct RopeSetup {
  std::vector<int32_t> positions, slots;
  std::vector<float> inv_freq;
  PagedKvCache kv;
};

RopeSetup rope_setup(DType t, const RopeCase& c, int32_t num_blocks, int32_t block_size,
                     double theta, std::mt19937_64& rng) {
  const int32_t d = c.head_dim, half = d / 2;
  RopeSetup r;
  r.positions.resize(c.rows);
  r.slots.resize(c.rows);
  std::uniform_int_distribution<int32_t> pos(0, 131071);
  for (auto& p : r.positions) p = pos(rng);
  std::vector<int32_t> all_slots(static_cast<size_t>(num_blocks) * block_size);
  std::iota(all_slots.begin(), all_slots.end(), 0);
  std::shuffle(all_slots.begin(), all_slots.end(), rng);
  for (int32_t row = 0; row < c.rows; ++row)
    r.slots[row] = (row % 5 == 3) ? -1 : all_slots[row];  // pads
  r.inv_freq.resize(half);
  for (int32_t i = 0; i < half; ++i)
    r.inv_freq[i] = static_cast<float>(std::pow(theta, -2.0 * i / d));
  PagedKvCache& kv = r.kv;
  kv.num_blocks = num_blocks;
  kv.block_size = block_size;
  kv.num_kv_heads = c.kv_heads;
  kv.head_dim = d;
  kv.layout = c.layout;
  kv.dtype = t;
  kv.storage = c.fp8 ? KvStorage::kFp8E4M3 : KvStorage::kModelDtype;
  kv.k_scale = c.fp8 ? 0.013f : 1.f;
  kv.v_scale = c.fp8 ? 0.0071f : 1.f;
  return r;
}

// The kernel's sum of squares of one head with a q/k norm: pair i's a^2 + b^2 (one fused
// multiply-add), summed over each warp's 32 pairs by its shuffle tree (lane l adds lane l + m
// for m = 16, 8, 4, 2, 1 while l + m is a pair of the head), then the warps' sums in order.
float head_sumsq(const std::vector<float>& a, const std::vector<float>& b) {
  const auto half = static_cast<int32_t>(a.size());
  float total = 0.f;
  for (int32_t first = 0; first < half; first += 32) {
    const int32_t lanes = std::min(32, half - first);
    float v[32];
    for (int32_t l = 0; l < lanes; ++l)
      v[l] = std::fma(a[first + l], a[first + l], b[first + l] * b[first + l]);
    // In ascending l, lane l + m is read before its own update, as the shuffle reads it.
    for (int32_t m = 16; m >= 1; m /= 2)
      for (int32_t l = 0; l + m < lanes; ++l) v[l] += v[l + m];
    total += v[0];
  }
  return total;
}

TEST_P(ModelOps, RopeAndCacheMatchesHostReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(13);
  // The last cases normalize each q and k head first (Qwen3): one warp, two, a partial one
  // (96 and 16), with a bias and into an fp8 cache.
  const std::vector<RopeCase> cases = {
      {128, 32, 8, 1, KvLayout::kHND, false, false, false},
      {128, 32, 8, 37, KvLayout::kHND, false, true, false},
      {128, 28, 4, 64, KvLayout::kNHD, false, true, false},
      {64, 8, 8, 9, KvLayout::kHND, false, false, false},
      {128, 32, 8, 130, KvLayout::kHND, true, false, false},
      {64, 12, 2, 20, KvLayout::kNHD, true, true, false},
      {16, 4, 2, 3, KvLayout::kHND, false, true, false},
      {128, 32, 8, 37, KvLayout::kHND, false, false, true},
      {64, 8, 8, 9, KvLayout::kNHD, false, true, true},
      {96, 6, 2, 11, KvLayout::kHND, false, false, true},
      {16, 4, 2, 3, KvLayout::kHND, false, true, true},
      {128, 32, 8, 130, KvLayout::kHND, true, false, true},
      {64, 12, 2, 20, KvLayout::kNHD, true, true, true},
  };
  constexpr float kNormEps = 1e-6f;
  // Every case in both row orders of qkv and bias: feature order, and paired order
  // (paired_rows.h, each head a group: row 16 j + 8 s + e holds feature s * half + 8 j + e),
  // built here on its own so that a wrong map in the kernels cannot agree with it.
  for (const bool pair_rows : {false, true})
    for (const RopeCase& c : cases) {
      const int32_t d = c.head_dim, half = d / 2;
      const int32_t q_dim = c.q_heads * d, kv_dim = c.kv_heads * d, width = q_dim + 2 * kv_dim;
      const int32_t block_size = 16;
      const int32_t num_blocks = (c.rows + block_size - 1) / block_size + 5;
      const auto qkv = random16(t, static_cast<size_t>(c.rows) * width, -2.f, 2.f, rng);
      const auto bias = random16(t, width, -0.5f, 0.5f, rng);
      const auto q_norm = random16(t, d, 0.25f, 2.f, rng);
      const auto k_norm = random16(t, d, 0.25f, 2.f, rng);
      auto [positions, slots, inv_freq, kv] =
          rope_setup(t, c, num_blocks, block_size, 500000.0, rng);
      const size_t pool_elems = static_cast<size_t>(num_blocks) * kv.block_stride();

      // Host reference: the kernel's float operations, rounded where it rounds.
      std::vector<uint16_t> want_q(static_cast<size_t>(c.rows) * q_dim);
      std::vector<uint32_t> want_k(pool_elems, c.fp8 ? kPoison8 : kPoison16);
      std::vector<uint32_t> want_v = want_k;
      auto stored = [&](uint16_t v, float scale) -> uint32_t {
        if (!c.fp8) return v;
        return float_to_fp8_e4m3_bits(to_float(t, v) * (1.f / scale));
      };
      for (int32_t r = 0; r < c.rows; ++r) {
        const uint16_t* row = qkv.data() + static_cast<size_t>(r) * width;
        auto value = [&](int32_t i) {
          return to_float(t, row[i]) + (c.bias ? to_float(t, bias[i]) : 0.f);
        };
        for (int32_t h = 0; h < c.q_heads + c.kv_heads; ++h) {
          const bool is_q = h < c.q_heads;
          const int32_t base = is_q ? h * d : q_dim + (h - c.q_heads) * d;
          // The pairs RoPE rotates: with the norm, the projection rounded to the dtype (as
          // transformers holds it), normalized over the head in float32, rounded, times the
          // weight, rounded again.
          std::vector<float> as(half), bs(half);
          for (int32_t i = 0; i < half; ++i) {
            as[i] = value(base + i), bs[i] = value(base + i + half);
            if (c.qk_norm)
              as[i] = to_float(t, round_to(t, as[i])), bs[i] = to_float(t, round_to(t, bs[i]));
          }
          if (c.qk_norm) {
            const float mean = head_sumsq(as, bs) / static_cast<float>(d) + kNormEps;
            const auto scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(mean)));
            const std::vector<uint16_t>& gamma = is_q ? q_norm : k_norm;
            auto norm = [&](float x, int32_t i) {
              return to_float(
                  t, round_to(t, to_float(t, gamma[i]) * to_float(t, round_to(t, x * scale))));
            };
            for (int32_t i = 0; i < half; ++i)
              as[i] = norm(as[i], i), bs[i] = norm(bs[i], i + half);
          }
          for (int32_t i = 0; i < half; ++i) {
            const float a = as[i], b = bs[i];
            const float angle = static_cast<float>(positions[r]) * inv_freq[i];
            const auto s = static_cast<float>(std::sin(static_cast<double>(angle)));
            const auto co = static_cast<float>(std::cos(static_cast<double>(angle)));
            const uint16_t ra = round_to(t, a * co - b * s), rb = round_to(t, b * co + a * s);
            if (is_q) {
              want_q[static_cast<size_t>(r) * q_dim + base + i] = ra;
              want_q[static_cast<size_t>(r) * q_dim + base + i + half] = rb;
            } else if (slots[r] >= 0) {
              const int64_t off =
                  kv.offset(slots[r] / block_size, slots[r] % block_size, h - c.q_heads);
              want_k[off + i] = stored(ra, kv.k_scale);
              want_k[off + i + half] = stored(rb, kv.k_scale);
              want_v[off + i] = stored(round_to(t, value(base + kv_dim + i)), kv.v_scale);
              want_v[off + i + half] =
                  stored(round_to(t, value(base + kv_dim + i + half)), kv.v_scale);
            }
          }
        }
      }

      // The kernels' view of qkv and bias: each head's elements moved to their rows.
      auto in_row_order = [&](const std::vector<uint16_t>& logical) {
        if (!pair_rows) return logical;
        std::vector<uint16_t> rows(logical.size());
        for (size_t head = 0; head < logical.size() / d; ++head)
          for (int32_t j = 0; j < half / 8; ++j)
            for (int32_t side = 0; side < 2; ++side)
              for (int32_t e = 0; e < 8; ++e)
                rows[head * d + 16 * j + 8 * side + e] =
                    logical[head * d + side * half + 8 * j + e];
        return rows;
      };
      uint16_t* d_qkv = upload(in_row_order(qkv));
      uint16_t* d_bias = upload(in_row_order(bias));
      uint16_t* d_q_norm = upload(q_norm);
      uint16_t* d_k_norm = upload(k_norm);
      const ops::QkNorm qk_norm =
          c.qk_norm ? ops::QkNorm{d_q_norm, d_k_norm, kNormEps} : ops::QkNorm{};
      int32_t* d_positions = upload(positions);
      int32_t* d_slots = upload(slots);
      float* d_inv_freq = upload(inv_freq);
      uint16_t* d_q = upload(std::vector<uint16_t>(want_q.size(), kPoison16));
      void *d_k = nullptr, *d_v = nullptr;
      if (c.fp8) {
        d_k = upload(std::vector<uint8_t>(pool_elems, kPoison8));
        d_v = upload(std::vector<uint8_t>(pool_elems, kPoison8));
      } else {
        d_k = upload(std::vector<uint16_t>(pool_elems, kPoison16));
        d_v = upload(std::vector<uint16_t>(pool_elems, kPoison16));
      }
      kv.k_pool = d_k;
      kv.v_pool = d_v;
      ops::rope_and_cache(d_qkv, c.bias ? d_bias : nullptr, d_positions, d_slots, d_inv_freq,
                          c.rows, c.q_heads, kv, d_q, nullptr, /*pdl=*/false, qk_norm, pair_rows);
      // The calculated fp8 scales of the same rows: from the largest |K| and |V| the kernel above
      // stores (checked below against its 16-bit cache, bit for bit).
      float* d_scales = upload(std::vector<float>(2, -1.f));
      ops::calculate_kv_scales(d_qkv, c.bias ? d_bias : nullptr, d_positions, d_slots, d_inv_freq,
                               c.rows, c.q_heads, kv, d_scales, nullptr, qk_norm, pair_rows);
      L2KV_CUDA_CHECK(cudaDeviceSynchronize());
      const auto got_scales = download(d_scales, 2);
      const auto got_q = download(d_q, want_q.size());
      std::vector<uint32_t> got_k(pool_elems), got_v(pool_elems);
      if (c.fp8) {
        const auto k8 = download(static_cast<uint8_t*>(d_k), pool_elems);
        const auto v8 = download(static_cast<uint8_t*>(d_v), pool_elems);
        std::copy(k8.begin(), k8.end(), got_k.begin());
        std::copy(v8.begin(), v8.end(), got_v.begin());
      } else {
        const auto k16 = download(static_cast<uint16_t*>(d_k), pool_elems);
        const auto v16 = download(static_cast<uint16_t*>(d_v), pool_elems);
        std::copy(k16.begin(), k16.end(), got_k.begin());
        std::copy(v16.begin(), v16.end(), got_v.begin());
      }
      for (void* p :
           {static_cast<void*>(d_qkv), static_cast<void*>(d_bias), static_cast<void*>(d_q_norm),
            static_cast<void*>(d_k_norm), static_cast<void*>(d_positions),
            static_cast<void*>(d_slots), static_cast<void*>(d_inv_freq), static_cast<void*>(d_q),
            static_cast<void*>(d_scales), d_k, d_v})
        cudaFree(p);

      const std::string where =
          "head_dim " + std::to_string(d) + " rows " + std::to_string(c.rows) +
          (c.fp8 ? " fp8" : "") + (c.bias ? " bias" : "") + (c.qk_norm ? " qk_norm" : "") +
          (pair_rows ? " pair rows" : "") + (c.layout == KvLayout::kNHD ? " NHD" : " HND");
      if (!c.fp8) {
        float k_max = 0.f, v_max = 0.f;
        for (size_t i = 0; i < pool_elems; ++i) {
          if (want_k[i] == kPoison16) continue;  // no row writes here
          k_max = std::max(k_max, std::fabs(to_float(t, static_cast<uint16_t>(got_k[i]))));
          v_max = std::max(v_max, std::fabs(to_float(t, static_cast<uint16_t>(got_v[i]))));
        }
        EXPECT_EQ(got_scales[0], kv_scale_from_amax(k_max, kKvScaleKeyRange)) << where;
        // (|V|'s largest value does not depend on the row order: the pair-row cases check the
        // map through K, which rotation makes order-dependent, and through the stored pools.)
        EXPECT_EQ(got_scales[1], kv_scale_from_amax(v_max, kKvScaleValueRange)) << where;
      }
      EXPECT_TRUE(acceptable(compare16(t, got_q, want_q, kRopeAbsoluteFloor))) << where << " (q)";
      for (const auto& [got, want, name] :
           {std::tie(got_k, want_k, "k"), std::tie(got_v, want_v, "v")}) {
        Mismatches m;
        for (size_t i = 0; i < pool_elems; ++i) {
          const bool poison = want[i] == (c.fp8 ? kPoison8 : kPoison16);
          if (poison) {  // a slot no row writes keeps its poison
            ASSERT_EQ(got[i], want[i]) << where << " " << name << ": unwritten element " << i;
            continue;
          }
          if (c.fp8)
            count(
                m, static_cast<int64_t>(i), got[i], want[i],
                [](uint32_t b) { return fp8_e4m3_bits_to_float(static_cast<uint8_t>(b)); }, 0x1p-3,
                0x1p-9);
          else
            count(
                m, static_cast<int64_t>(i), got[i], want[i],
                [t](uint32_t b) { return to_float(t, static_cast<uint16_t>(b)); }, relative_ulp(t),
                std::max(smallest_step(t), kRopeAbsoluteFloor));
        }
        EXPECT_TRUE(acceptable(m)) << where << " (" << name << ")";
      }
    }
}

// rope_and_cache has a 16-byte vector form (rope_cache_vectors.h) for aligned buffers and a
// generic kernel for the rest: the two must store the same bits. Each case runs once on aligned
// buffers and once with qkv, bias and q_out 8 bytes off (the generic kernel), at head sizes whose
// chunks of 8 pairs are not a power of two (80, 96) and up to 256, in both pool layouts and row
// orders, 16-bit and fp8 caches, with pad rows; the bytes in front of each pool must stay
// untouched (a pad row's slot -1 must never become a write before the pool).
TEST_P(ModelOps, RopeVectorFormStoresTheGenericKernelsBits) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(17);
  constexpr int32_t kRows = 37, kBlockSize = 16;
  const std::vector<RopeCase> cases = {
      {80, 10, 2, kRows, KvLayout::kHND, false, true, false},
      {96, 6, 2, kRows, KvLayout::kNHD, false, false, false},
      {96, 6, 3, kRows, KvLayout::kHND, true, true, false},
      {128, 32, 8, kRows, KvLayout::kNHD, true, false, false},
      {256, 8, 4, kRows, KvLayout::kHND, false, true, false},
      {256, 8, 2, kRows, KvLayout::kNHD, true, true, false},
  };
  constexpr size_t kGuardBytes = 4096, kShiftBytes = 8;
  for (const bool pair_rows : {false, true})
    for (const RopeCase& c : cases) {
      const int32_t d = c.head_dim;
      const int32_t width = (c.q_heads + 2 * c.kv_heads) * d;
      const int32_t num_blocks = (kRows + kBlockSize - 1) / kBlockSize + 3;
      const auto qkv = random16(t, static_cast<size_t>(kRows) * width, -2.f, 2.f, rng);
      const auto bias = random16(t, width, -0.5f, 0.5f, rng);
      const auto [positions, slots, inv_freq, kv] =
          rope_setup(t, c, num_blocks, kBlockSize, 10000.0, rng);
      const size_t pool_bytes = static_cast<size_t>(kv.pool_bytes());
      const size_t q_bytes = static_cast<size_t>(kRows) * c.q_heads * d * 2;
      const std::string where = "head_dim " + std::to_string(d) + (c.fp8 ? " fp8" : "") +
                                (c.bias ? " bias" : "") + (pair_rows ? " pair rows" : "") +
                                (c.layout == KvLayout::kNHD ? " NHD" : " HND");
      // One run with the inputs and q `shift` bytes into their buffers; returns q, K, V and the
      // bytes in front of each pool.
      auto run = [&](size_t shift) {
        auto place = [&](const std::vector<uint16_t>& host) {
          std::byte* p = nullptr;
          L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p), host.size() * 2 + 16));
          L2KV_CUDA_CHECK(
              cudaMemcpy(p + shift, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
          return p;
        };
        std::byte* d_qkv = place(qkv);
        std::byte* d_bias = place(bias);
        std::byte* d_q = nullptr;
        L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&d_q), q_bytes + 16));
        L2KV_CUDA_CHECK(cudaMemset(d_q, 0xff, q_bytes + 16));
        std::byte *d_k = nullptr, *d_v = nullptr;
        for (std::byte** pool : {&d_k, &d_v}) {
          L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(pool), kGuardBytes + pool_bytes));
          L2KV_CUDA_CHECK(cudaMemset(*pool, c.fp8 ? kPoison8 : 0xff, kGuardBytes + pool_bytes));
        }
        int32_t* d_positions = upload(positions);
        int32_t* d_slots = upload(slots);
        float* d_inv_freq = upload(inv_freq);
        PagedKvCache run_kv = kv;
        run_kv.k_pool = d_k + kGuardBytes;
        run_kv.v_pool = d_v + kGuardBytes;
        ops::rope_and_cache(d_qkv + shift, c.bias ? d_bias + shift : nullptr, d_positions, d_slots,
                            d_inv_freq, kRows, c.q_heads, run_kv, d_q + shift, nullptr,
                            /*pdl=*/false, ops::QkNorm{}, pair_rows);
        L2KV_CUDA_CHECK(cudaDeviceSynchronize());
        std::vector<std::vector<uint8_t>> out;
        std::vector<uint8_t> q(q_bytes);
        L2KV_CUDA_CHECK(cudaMemcpy(q.data(), d_q + shift, q_bytes, cudaMemcpyDeviceToHost));
        out.push_back(q);
        for (std::byte* pool : {d_k, d_v}) {
          std::vector<uint8_t> all(kGuardBytes + pool_bytes);
          L2KV_CUDA_CHECK(cudaMemcpy(all.data(), pool, all.size(), cudaMemcpyDeviceToHost));
          out.emplace_back(all.begin() + kGuardBytes, all.end());
          out.emplace_back(all.begin(), all.begin() + kGuardBytes);
        }
        for (void* p :
             {static_cast<void*>(d_qkv), static_cast<void*>(d_bias), static_cast<void*>(d_q),
              static_cast<void*>(d_k), static_cast<void*>(d_v), static_cast<void*>(d_positions),
              static_cast<void*>(d_slots), static_cast<void*>(d_inv_freq)})
          cudaFree(p);
        return out;
      };
      const auto vector_form = run(0), generic = run(kShiftBytes);
      const uint8_t poison = c.fp8 ? kPoison8 : 0xff;
      const char* names[] = {"q", "k", "bytes before k", "v", "bytes before v"};
      for (size_t i = 0; i < vector_form.size(); ++i)
        EXPECT_TRUE(vector_form[i] == generic[i]) << where << ": " << names[i] << " differs";
      for (size_t i : {size_t{2}, size_t{4}})
        EXPECT_TRUE(std::all_of(vector_form[i].begin(), vector_form[i].end(),
                                [&](uint8_t b) { return b == poison; }))
            << where << ": " << names[i] << " written";
      // Not a vacuous comparison: q is written everywhere and some K differs from the poison.
      int64_t unwritten_q = 0;
      for (size_t i = 0; i + 1 < vector_form[0].size(); i += 2)
        unwritten_q += vector_form[0][i] == 0xff && vector_form[0][i + 1] == 0xff;
      EXPECT_EQ(unwritten_q, 0) << where << ": q elements left as poison";
      EXPECT_FALSE(std::all_of(vector_form[1].begin(), vector_form[1].end(),
                               [&](uint8_t b) { return b == poison; }))
          << where << ": no K stored";
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ModelOps, ::testing::Values(DType::kBFloat16, DType::kFloat16),
                         [](const auto& param_info) {
                           return std::string(dtype_name(param_info.param));
                         });

}  // namespace
}  // namespace l2kv
