// The decode layer's fused projections (gemv.h's GemvFusion) against their composition on the
// host in double precision: the RMSNorm prologue (x computed from an fp32 residual, its sums of
// squares, the norm's weight) with a plain store (QKV) and with the SiLU x up epilogue over
// interleaved gate/up rows (gate_up), that epilogue on 16-bit x, and the residual-add epilogue with
// its sums of squares (O, down). Fresh random inputs, every row count 1-16, the shapes of
// Llama-3-8B, Qwen2.5-7B and odd ones, outputs poisoned with NaN first; per-element tolerances from
// the GEMV's measured noise (gemv_gpu_test.cpp), which a 1 % scale error or a dropped term exceeds.
// The QKV projection's RoPE + paged-KV epilogue is checked bit for bit against the GEMV's plain
// store followed by ops::rope_and_cache over the same paired rows (each checked against its
// own host reference in gemv_gpu_test.cpp and model_ops_gpu_test.cpp). Every form again with
// E4M3 weights and per-row scales (GemvFusion::fp8_scale), against the host's product with
// W = scale x code.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/dtype.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/kernels/model/gemv.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/random_fill.h"

namespace l2kv {
namespace {

using testing::upload;

struct Shape {
  const char* name;
  int64_t in, out;
};

// out is a multiple of 16 wherever a SiLU epilogue runs (gate_up of every model has it).
const std::vector<Shape> kShapes = {
    {"llama3-8b qkv", 4096, 6144},
    {"llama3-8b o", 4096, 4096},
    {"llama3-8b gate_up", 4096, 28672},
    {"llama3-8b down", 14336, 4096},
    {"qwen2.5-7b qkv", 3584, 4608},
    {"qwen2.5-7b gate_up", 3584, 37888},
    {"qwen2.5-7b down", 18944, 3584},
    {"odd in24 out48", 24, 48},
    {"odd in1032 out112", 1032, 112},
    {"odd in4104 out1008", 4104, 1008},
    {"odd in1040 out112", 1040, 112},  // 65 vectors of 16 fp8 weights a row: a partial iteration
    {"odd in1040 out104", 1040, 104},  // a last feature tile past the end of W
    // 16,384 outputs: blocks of two feature tiles under the norm prologue; one row of 5632
    // features stages 11 KB of x (the three-stage ring), one of 24 the two-stage ring.
    {"wide in5632 out16384", 5632, 16384},
    {"wide in24 out16384", 24, 16384},
};

// As gemv_gpu_test.cpp: |y - ref| <= atol + rtol |ref|, atol the fp32 accumulation noise.
struct Tolerance {
  double atol, rtol;
  double bound(double ref) const { return atol + rtol * std::abs(ref); }
};
Tolerance tolerance(DType dtype, int64_t in) {
  return {64 * 0x1p-24 * static_cast<double>(in) / 3.0 + 1e-6,
          dtype == DType::kBFloat16 ? 0x1p-8 : 0x1p-10};
}

double round_to(DType t, double v) {
  return dtype_bits_to_float(t, float_to_dtype_bits(t, static_cast<float>(v)));
}

template <typename T>
std::vector<T> download(const T* p, size_t n) {
  std::vector<T> v(n);
  L2KV_CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

// Output features checked: all of a small problem, else the first and last 48 and random ones.
std::vector<int64_t> checked_features(int64_t out, std::mt19937_64& rng) {
  std::vector<int64_t> f;
  if (out <= 160) {
    for (int64_t n = 0; n < out; ++n) f.push_back(n);
    return f;
  }
  for (int64_t n = 0; n < 48; ++n) f.push_back(n), f.push_back(out - 1 - n);
  std::uniform_int_distribution<int64_t> pick(48, out - 49);
  while (f.size() < 160) f.push_back(pick(rng));
  std::sort(f.begin(), f.end());
  f.erase(std::unique(f.begin(), f.end()), f.end());
  return f;
}

// kWeighted*: x given as round(gamma x residual), each row's 1 / rms applied to the sums
// (gemv.h's weighted x). kResidualWeighted: kResidualAdd that also writes the next weighted x.
enum class Form {
  kNormStore,
  kNormSilu,
  kSilu,
  kResidualAdd,
  kResidualWeighted,
  kWeightedStore,
  kWeightedSilu
};

const char* form_name(Form f) {
  return f == Form::kNormStore          ? "norm+store"
         : f == Form::kNormSilu         ? "norm+silu"
         : f == Form::kSilu             ? "silu"
         : f == Form::kWeightedStore    ? "weighted+store"
         : f == Form::kWeightedSilu     ? "weighted+silu"
         : f == Form::kResidualWeighted ? "residual+weighted x"
                                        : "residual";
}

// Random E4M3 weights [out, in] of magnitudes 0.125-7.5 (exponent fields 4-9) and per-row scales
// of 0.05-0.15: W's elements are of the size of the 16-bit tests' U(-1, 1) weights.
struct RandomFp8Weights {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
};
RandomFp8Weights random_fp8(int64_t in, int64_t out, float scale_size, std::mt19937_64& rng) {
  RandomFp8Weights w;
  w.codes.resize(static_cast<size_t>(in * out));
  // Eight codes per 64-bit draw (sign and mantissa bits as drawn, the exponent folded into 4-9):
  // a billion codes per test, so one draw per code would take the host most of a minute.
  for (size_t i = 0; i < w.codes.size(); i += 8) {
    uint64_t bits = rng();
    for (size_t j = i; j < std::min(i + 8, w.codes.size()); ++j, bits >>= 8) {
      const auto b = static_cast<uint32_t>(bits & 0xff);
      w.codes[j] = static_cast<uint8_t>((b & 0x87u) | (4u + ((b >> 3) & 0xfu) % 6u) << 3);
    }
  }
  std::uniform_real_distribution<float> s(scale_size, 3 * scale_size);
  w.scales.resize(static_cast<size_t>(out));
  for (float& v : w.scales) v = s(rng);
  return w;
}

// One shape, one form, every row count 1-16, through Gemm::linear_fused (with PDL on, as the
// model runs it; nothing runs ahead of it here). `fp8`: E4M3 weights with per-row scales
// (GemvFusion::fp8_scale), the reference's W their scale x code; `per_tensor`: one scale for all.
void check(const Shape& shape, Form form, DType dtype, uint64_t seed, bool fp8 = false,
           bool per_tensor = false) {
  const int64_t in = shape.in, out = shape.out;
  if (testing::quick_mode() && in * out > 4096 * 6144) return;  // under compute-sanitizer
  const bool norm = form == Form::kNormStore || form == Form::kNormSilu;
  const bool weighted = form == Form::kWeightedStore || form == Form::kWeightedSilu;
  const bool normalized = norm || weighted;  // x is RMSNorm(residual) one way or the other
  const bool silu_epilogue =
      form == Form::kNormSilu || form == Form::kSilu || form == Form::kWeightedSilu;
  const bool residual_add = form == Form::kResidualAdd || form == Form::kResidualWeighted;
  const int64_t y_width = silu_epilogue ? out / 2 : out;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);

  std::vector<uint16_t> w_bits(static_cast<size_t>(in * out));
  RandomFp8Weights w8 = fp8 ? random_fp8(in, out, 0.05f, rng) : RandomFp8Weights{};
  if (per_tensor) w8.scales.resize(1);
  if (!fp8) {
    void* w_fill = nullptr;
    L2KV_CUDA_CHECK(cudaMalloc(&w_fill, w_bits.size() * 2));
    fill_random(w_fill, in * out, dtype, 1.f, seed, nullptr);
    L2KV_CUDA_CHECK(cudaMemcpy(w_bits.data(), w_fill, w_bits.size() * 2, cudaMemcpyDeviceToHost));
    cudaFree(w_fill);
  }
  void* w = fp8 ? static_cast<void*>(upload(w8.codes)) : static_cast<void*>(upload(w_bits));
  float* d_w_scales = fp8 ? upload(w8.scales) : nullptr;
  std::vector<uint16_t> gamma(static_cast<size_t>(in));
  for (auto& g : gamma) g = float_to_dtype_bits(dtype, 0.5f + std::abs(uniform(rng)));
  uint16_t* d_gamma = upload(gamma);
  const float eps = 1e-5f;
  // E4M3 codes spread wider than U(-1, 1): twice the accumulation bound.
  Tolerance tol = tolerance(dtype, in);
  if (fp8) tol.atol *= 2;
  // Features of the output checked (for SiLU: features of y, each reading W rows of its gate
  // and up).
  const std::vector<int64_t> features = checked_features(y_width, rng);
  double code_value[256];  // E4M3 decoded once: the references read every weight many times
  for (int c = 0; c < 256; ++c) code_value[c] = fp8_e4m3_bits_to_float(static_cast<uint8_t>(c));
  auto w_at = [&](int64_t row, int64_t k) {
    if (fp8)
      return static_cast<double>(w8.scales[per_tensor ? 0 : row]) *
             code_value[w8.codes[row * in + k]];
    return static_cast<double>(dtype_bits_to_float(dtype, w_bits[row * in + k]));
  };

  // fp8 weights: the row counts where the kernel's forms change (ring up to 8, two x tiles from
  // 9), not all 16, to keep the host references' time down.
  std::vector<int64_t> row_counts;
  for (int64_t rows = 1; rows <= kGemvMaxRows; ++rows)
    if ((!testing::quick_mode() && !fp8) || rows == 1 || rows == 9 || rows == 16 ||
        (fp8 && (rows == 3 || rows == 8)))
      row_counts.push_back(rows);
  for (const int64_t rows : row_counts) {
    SCOPED_TRACE(std::string(shape.name) + " " + form_name(form) + " " +
                 std::string(dtype_name(dtype)) + " rows=" + std::to_string(rows));
    // Inputs: an fp32 residual in [-2, 2) (norm forms and the residual epilogue), or 16-bit x.
    std::vector<float> residual(static_cast<size_t>(rows * (normalized ? in : out)));
    for (auto& r : residual) r = 2.f * uniform(rng);
    std::vector<uint16_t> x_bits(static_cast<size_t>(rows * in));
    for (auto& b : x_bits) b = float_to_dtype_bits(dtype, uniform(rng));
    // x as the kernel must see it.
    std::vector<double> x(static_cast<size_t>(rows * in));
    std::vector<RowSumsq> sumsq_in(kGemvMaxRows, 0);                // fixed point (row_sumsq.h)
    std::vector<double> row_scale(static_cast<size_t>(rows), 1.0);  // weighted x: 1 / rms
    for (int64_t m = 0; m < rows; ++m) {
      if (!normalized) {
        for (int64_t k = 0; k < in; ++k)
          x[m * in + k] = dtype_bits_to_float(dtype, x_bits[m * in + k]);
        continue;
      }
      double ss = 0;
      for (int64_t k = 0; k < in; ++k)
        ss += static_cast<double>(residual[m * in + k]) * residual[m * in + k];
      sumsq_in[m] = to_row_sumsq(static_cast<float>(ss));
      // Correctly rounded, as the kernel's __frsqrt_rn: x then matches it bit for bit.
      const float scale = static_cast<float>(
          1.0 / std::sqrt(static_cast<double>(
                    row_sumsq_value(sumsq_in[m]) / static_cast<float>(in) + eps)));
      // Weighted x: x is round(gamma x residual), given as x; the scale multiplies the sums.
      const float x_scale = weighted ? 1.f : scale;
      row_scale[static_cast<size_t>(m)] = weighted ? scale : 1.0;
      for (int64_t k = 0; k < in; ++k) {
        const float v = dtype_bits_to_float(dtype, gamma[k]) * (residual[m * in + k] * x_scale);
        x[m * in + k] = round_to(dtype, v);
        if (weighted) x_bits[m * in + k] = float_to_dtype_bits(dtype, v);
      }
    }
    auto dot = [&](int64_t m, int64_t row) {
      double s = 0;
      for (int64_t k = 0; k < in; ++k) s += x[m * in + k] * w_at(row, k);
      return s * row_scale[static_cast<size_t>(m)];
    };

    float* d_residual = upload(residual);
    uint16_t* d_x = upload(x_bits);
    RowSumsq* d_sumsq = upload(sumsq_in);
    const RowSumsq sumsq_start = to_row_sumsq(3.25f);  // the residual epilogue adds to it
    RowSumsq* d_acc = upload(std::vector<RowSumsq>(kGemvMaxRows, sumsq_start));
    RowSumsq* d_clear = upload(std::vector<RowSumsq>(kGemvMaxRows, 7));
    uint16_t* d_y = upload(std::vector<uint16_t>(static_cast<size_t>(rows * y_width), 0xffff));
    // The residual epilogue's next weighted x, with a norm weight of its own.
    std::vector<uint16_t> next_gamma(form == Form::kResidualWeighted ? static_cast<size_t>(out)
                                                                     : 0);
    for (auto& g : next_gamma) g = float_to_dtype_bits(dtype, 0.5f + std::abs(uniform(rng)));
    uint16_t* d_next_gamma = upload(next_gamma);
    uint16_t* d_next_x = upload(std::vector<uint16_t>(next_gamma.size() * rows, 0xffff));

    GemvFusion f;
    f.fp8_scale = d_w_scales;
    f.fp8_per_channel = fp8 && !per_tensor;
    if (normalized) {
      f.norm_residual = norm ? d_residual : nullptr;
      f.norm_weight = norm ? d_gamma : nullptr;
      f.norm_sumsq = d_sumsq;
      f.clear_sumsq = d_clear;
      f.eps = eps;
    }
    if (silu_epilogue) f.epilogue = GemvEpilogue::kSiluMul;
    if (residual_add) {
      f.epilogue = GemvEpilogue::kResidualAdd;
      f.residual = d_residual;
      f.residual_sumsq = d_acc;
      if (form == Form::kResidualWeighted) {
        f.weighted_x = d_next_x;
        f.weighted_x_norm = d_next_gamma;
      }
    }
    Gemm gemm;
    gemm.set_programmatic_launch(true);
    ASSERT_TRUE(gemm.fused_supported(rows, in, out, norm ? nullptr : d_x, w, f));
    gemm.linear_fused(dtype, norm ? nullptr : d_x, w, residual_add ? nullptr : d_y, rows, in, out,
                      f, nullptr);
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());

    int64_t bad = 0;
    // fp16 overflows past 65504: there the output must be the infinity of the reference's sign.
    const double largest = dtype == DType::kFloat16 ? 65504.0 : 3.3e38;
    auto expect_near = [&](double got, double want, double bound, const std::string& what) {
      if (std::isfinite(got) && std::abs(got - want) <= bound) return;
      if (std::isinf(got) && std::abs(want) - bound > largest && (got > 0) == (want > 0)) return;
      if (bad++ < 3) ADD_FAILURE() << what << " = " << got << ", reference " << want;
    };
    if (residual_add) {
      const auto got = download(d_residual, residual.size());
      const auto acc = download(d_acc, kGemvMaxRows);
      for (int64_t m = 0; m < rows; ++m) {
        double ss = 0;  // of the residual the kernel left, checked below on sampled features
        for (int64_t n = 0; n < out; ++n)
          ss += static_cast<double>(got[m * out + n]) * got[m * out + n];
        for (const int64_t n : features) {
          const double y = dot(m, n);
          const double want = residual[m * out + n] + y;
          expect_near(got[m * out + n], want, tol.bound(y) + 1e-6 * std::abs(want),
                      "residual[" + std::to_string(m) + "][" + std::to_string(n) + "]");
        }
        // Each thread's addend rounds to 2^-20: out / 2 of them.
        const double start = row_sumsq_value(sumsq_start);
        expect_near(row_sumsq_value(acc[m]), start + ss,
                    1e-5 * (start + ss) + static_cast<double>(out) * 0x1p-21,
                    "sumsq[" + std::to_string(m) + "]");
      }
      for (int64_t m = rows; m < kGemvMaxRows; ++m)
        EXPECT_EQ(acc[m], sumsq_start) << "sumsq of a row past the batch changed";
      if (form == Form::kResidualWeighted) {
        // The next weighted x: round(next gamma x the new residual), bit for bit, everywhere.
        const auto next_x = download(d_next_x, next_gamma.size() * rows);
        int64_t wrong = 0;
        for (int64_t m = 0; m < rows; ++m)
          for (int64_t n = 0; n < out; ++n) {
            const uint16_t want = float_to_dtype_bits(
                dtype, dtype_bits_to_float(dtype, next_gamma[n]) * got[m * out + n]);
            if (next_x[m * out + n] != want && wrong++ < 3)
              ADD_FAILURE() << "weighted x[" << m << "][" << n << "] = " << next_x[m * out + n]
                            << ", reference " << want;
          }
        EXPECT_EQ(wrong, 0) << "weighted x elements wrong";
      }
    } else {
      std::vector<double> y(static_cast<size_t>(rows * y_width));
      const auto bits = download(d_y, y.size());
      for (size_t i = 0; i < y.size(); ++i) y[i] = dtype_bits_to_float(dtype, bits[i]);
      EXPECT_EQ(std::count_if(y.begin(), y.end(), [](double v) { return std::isnan(v); }), 0)
          << "unwritten outputs";
      for (int64_t m = 0; m < rows; ++m)
        for (const int64_t n : features) {
          const std::string what = "y[" + std::to_string(m) + "][" + std::to_string(n) + "]";
          if (form == Form::kNormStore || form == Form::kWeightedStore) {
            const double want = dot(m, n);
            expect_near(y[m * y_width + n], want, tol.bound(want), what);
            continue;
          }
          // Feature n's gate is W row 16 (n / 8) + n % 8, its up 8 rows further.
          const int64_t gate_row = (n / 8) * 16 + n % 8;
          const double gate = dot(m, gate_row), up = dot(m, gate_row + 8);
          const double silu = gate / (1 + std::exp(-gate));
          const double want = silu * up;
          // The epilogue rounds gate and up to 16 bits before combining them.
          const double slope =
              std::abs(1 / (1 + std::exp(-gate)) * (1 + gate * (1 - 1 / (1 + std::exp(-gate)))));
          const double bound =
              1.1 * (slope * tol.bound(gate) * std::abs(up) + std::abs(silu) * tol.bound(up)) +
              2 * tol.rtol * std::abs(want) + 1e-6;
          expect_near(y[m * y_width + n], want, bound, what);
        }
    }
    EXPECT_EQ(bad, 0) << "elements outside tolerance";
    if (normalized) {
      const auto cleared = download(d_clear, kGemvMaxRows);
      EXPECT_TRUE(std::all_of(cleared.begin(), cleared.end(), [](RowSumsq v) { return v == 0; }))
          << "clear_sumsq not zeroed";
    }
    for (void* p :
         {static_cast<void*>(d_residual), static_cast<void*>(d_x), static_cast<void*>(d_sumsq),
          static_cast<void*>(d_acc), static_cast<void*>(d_clear), static_cast<void*>(d_y),
          static_cast<void*>(d_next_gamma), static_cast<void*>(d_next_x)})
      cudaFree(p);
  }
  cudaFree(w);
  cudaFree(d_w_scales);
  cudaFree(d_gamma);
}

class FusedGemv : public ::testing::TestWithParam<DType> {};

TEST_P(FusedGemv, NormPrologueWithStoreMatchesComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 500;
  for (const Shape& s : kShapes) check(s, Form::kNormStore, GetParam(), ++seed);
}

TEST_P(FusedGemv, NormPrologueWithSiluEpilogueMatchesComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 600;
  for (const Shape& s : kShapes)
    if (s.out % 16 == 0) check(s, Form::kNormSilu, GetParam(), ++seed);
}

TEST_P(FusedGemv, SiluEpilogueMatchesComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 650;
  for (const Shape& s : kShapes)
    if (s.out % 16 == 0) check(s, Form::kSilu, GetParam(), ++seed);
}

TEST_P(FusedGemv, WeightedXWithStoreAndSiluMatchesComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 680;
  for (const Shape& s : kShapes) {
    check(s, Form::kWeightedStore, GetParam(), ++seed);
    if (s.out % 16 == 0) check(s, Form::kWeightedSilu, GetParam(), ++seed);
  }
}

TEST_P(FusedGemv, ResidualEpilogueMatchesComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 700;
  for (const Shape& s : kShapes) {
    check(s, Form::kResidualAdd, GetParam(), ++seed);
    check(s, Form::kResidualWeighted, GetParam(), ++seed);
  }
}

// Every form with fp8 weights, on the shapes whose rows are whole 16-weight vectors.
TEST_P(FusedGemv, Fp8WeightsMatchComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 750;
  for (const Shape& s : kShapes) {
    if (s.in % 16 != 0) continue;
    for (const Form form : {Form::kNormStore, Form::kNormSilu, Form::kSilu, Form::kResidualAdd,
                            Form::kResidualWeighted, Form::kWeightedStore, Form::kWeightedSilu})
      if (s.out % 16 == 0 || form == Form::kNormStore || form == Form::kResidualAdd ||
          form == Form::kResidualWeighted || form == Form::kWeightedStore)
        check(s, form, GetParam(), ++seed, /*fp8=*/true);
  }
  // One scale for the whole matrix (the loader expands per-tensor checkpoints, but the GEMV
  // takes either).
  check(kShapes[0], Form::kNormStore, GetParam(), ++seed, /*fp8=*/true, /*per_tensor=*/true);
  check(kShapes[1], Form::kResidualAdd, GetParam(), ++seed, /*fp8=*/true, /*per_tensor=*/true);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, FusedGemv, ::testing::Values(DType::kBFloat16, DType::kFloat16),
                         [](const auto& param_info) {
                           return std::string(dtype_name(param_info.param));
                         });

struct RopeShape {
  const char* name;
  int32_t hidden, q_heads, kv_heads, head_dim;
  bool bias;
  KvLayout layout;
  bool fp8_cache;
};

const std::vector<RopeShape> kRopeShapes = {
    {"llama3-8b", 4096, 32, 8, 128, false, KvLayout::kHND, false},
    {"qwen2.5-7b", 3584, 28, 4, 128, true, KvLayout::kHND, false},
    {"llama3-8b fp8 cache", 4096, 32, 8, 128, false, KvLayout::kHND, true},
    {"small NHD", 1032, 6, 2, 64, true, KvLayout::kNHD, false},
    {"small fp8 NHD", 1032, 6, 2, 64, true, KvLayout::kNHD, true},
    {"small fp8 NHD, rows of 16-byte fp8 vectors", 1040, 6, 2, 64, true, KvLayout::kNHD, true},
    // 16,384 outputs: the norm prologue's blocks of two feature tiles (gemv.cu's wide form).
    {"wide MHA", 2048, 64, 32, 128, true, KvLayout::kHND, false},
    // head_dim 256 (Gemma 3 12B; the q/k-norm epilogue takes 64 and 128 only).
    {"gemma3-12b", 3840, 16, 8, 256, false, KvLayout::kHND, false},
    // 16,384 outputs of head_dim 64: the wide form's two tiles a block make a q/k-norm head a
    // cluster of 2.
    {"wide head_dim 64", 2048, 128, 64, 64, false, KvLayout::kHND, false},
};

// The kRopeCache epilogue (with and without the norm prologue) against the GEMV's kStore of the
// same problem followed by ops::rope_and_cache(pair_rows): q and both pools equal bit for bit,
// every q element and every kept (row, kv head) written.
// `weighted`: x is taken as weighted x (gemv.h), the sums scaled by each row's 1 / rms.
// `qk_norm`: Qwen3's per-head q/k RMSNorm before RoPE, in both (the epilogue's blocks of a head
// add up its sums of squares in a cluster).
void check_rope(const RopeShape& shape, bool norm, DType dtype, uint64_t seed, bool fp8 = false,
                bool weighted = false, bool qk_norm = false) {
  const int64_t in = shape.hidden, d = shape.head_dim;
  const int64_t q_dim = shape.q_heads * d, out = q_dim + 2 * shape.kv_heads * d;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  void* w = nullptr;
  float* d_w_scales = nullptr;
  if (fp8) {  // weights of about 0.05 again: codes up to 7.5 times scales up to 0.0075
    const RandomFp8Weights w8 = random_fp8(in, out, 0.0025f, rng);
    w = upload(w8.codes);
    d_w_scales = upload(w8.scales);
  } else {
    L2KV_CUDA_CHECK(cudaMalloc(&w, static_cast<size_t>(in * out) * 2));
    fill_random(w, in * out, dtype, 0.05f, seed, nullptr);
  }
  std::vector<uint16_t> bias(static_cast<size_t>(out)), gamma(static_cast<size_t>(in));
  for (auto& b : bias) b = float_to_dtype_bits(dtype, 0.5f * uniform(rng));
  for (auto& g : gamma) g = float_to_dtype_bits(dtype, 0.5f + std::abs(uniform(rng)));
  std::vector<float> inv_freq(static_cast<size_t>(d / 2));
  for (int64_t i = 0; i < d / 2; ++i)
    inv_freq[i] = static_cast<float>(std::pow(500000.0, -2.0 * static_cast<double>(i) / d));
  uint16_t* d_bias = upload(bias);
  uint16_t* d_gamma = upload(gamma);
  float* d_inv_freq = upload(inv_freq);
  float* d_scales = upload(std::vector<float>{0.011f, 0.0067f});  // fp8: read from the device
  std::vector<uint16_t> q_norm(static_cast<size_t>(d)), k_norm(static_cast<size_t>(d));
  for (auto& g : q_norm) g = float_to_dtype_bits(dtype, 0.5f + std::abs(uniform(rng)));
  for (auto& g : k_norm) g = float_to_dtype_bits(dtype, 0.5f + std::abs(uniform(rng)));
  uint16_t* d_q_norm = upload(q_norm);
  uint16_t* d_k_norm = upload(k_norm);
  const ops::QkNorm composed_norm =
      qk_norm ? ops::QkNorm{d_q_norm, d_k_norm, 1e-6f} : ops::QkNorm{};

  for (int64_t rows = 1; rows <= kGemvMaxRows; ++rows) {
    if (testing::quick_mode() && rows != 1 && rows != 9 && rows != 16) continue;
    SCOPED_TRACE(std::string(shape.name) + (norm ? " norm" : "") + (weighted ? " weighted" : "") +
                 (qk_norm ? " qk_norm" : "") + " " + std::string(dtype_name(dtype)) +
                 " rows=" + std::to_string(rows));
    PagedKvCache kv;
    kv.block_size = 16;
    kv.num_blocks = static_cast<int32_t>((rows + 15) / 16 + 4);
    kv.num_kv_heads = shape.kv_heads;
    kv.head_dim = shape.head_dim;
    kv.layout = shape.layout;
    kv.dtype = dtype;
    kv.storage = shape.fp8_cache ? KvStorage::kFp8E4M3 : KvStorage::kModelDtype;
    kv.device_scales = shape.fp8_cache ? d_scales : nullptr;
    const size_t pool_bytes = static_cast<size_t>(kv.pool_bytes());
    std::vector<int32_t> positions(rows), slots(rows), all(kv.num_blocks * kv.block_size);
    std::uniform_int_distribution<int32_t> pos(0, 131071);
    for (auto& p : positions) p = pos(rng);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    int64_t kept = 0;
    for (int64_t r = 0; r < rows; ++r) {
      slots[r] = r % 5 == 3 ? -1 : all[r];  // pad rows keep nothing
      kept += slots[r] >= 0;
    }
    std::vector<float> residual(static_cast<size_t>(rows * in));
    for (auto& r : residual) r = 2.f * uniform(rng);
    std::vector<float> sums(kGemvMaxRows, 0.f);
    for (int64_t m = 0; m < rows; ++m)
      for (int64_t k = 0; k < in; ++k) sums[m] += residual[m * in + k] * residual[m * in + k];
    std::vector<RowSumsq> sumsq(kGemvMaxRows, 0);  // fixed point (row_sumsq.h)
    for (int64_t m = 0; m < kGemvMaxRows; ++m) sumsq[m] = to_row_sumsq(sums[m]);
    std::vector<uint16_t> x(static_cast<size_t>(rows * in));
    for (auto& b : x) b = float_to_dtype_bits(dtype, uniform(rng));
    float* d_residual = upload(residual);
    RowSumsq* d_sumsq = upload(sumsq);
    uint16_t* d_x = upload(x);
    int32_t* d_positions = upload(positions);
    int32_t* d_slots = upload(slots);
    uint16_t* d_qkv = upload(std::vector<uint16_t>(static_cast<size_t>(rows * out), 0xffff));
    // Two of each output, poisoned (NaN): [0] from the epilogue, [1] from the composition.
    uint16_t* d_q[2];
    void *d_k[2], *d_v[2];
    for (int i = 0; i < 2; ++i) {
      d_q[i] = upload(std::vector<uint16_t>(static_cast<size_t>(rows * q_dim), 0xffff));
      d_k[i] = upload(std::vector<uint8_t>(pool_bytes, 0x7f));
      d_v[i] = upload(std::vector<uint8_t>(pool_bytes, 0x7f));
    }

    GemvFusion f;
    f.fp8_scale = d_w_scales;
    f.fp8_per_channel = fp8;
    if (norm) {
      f.norm_residual = d_residual;
      f.norm_weight = d_gamma;
      f.norm_sumsq = d_sumsq;
      f.eps = 1e-5f;
    } else if (weighted) {
      f.norm_sumsq = d_sumsq;
      f.eps = 1e-5f;
    }
    const void* x_in = norm ? nullptr : d_x;
    Gemm gemm;
    gemm.set_programmatic_launch(true);
    GemvFusion rope = f;
    rope.epilogue = GemvEpilogue::kRopeCache;
    rope.rope = {
        shape.bias ? d_bias : nullptr, d_positions, d_slots, d_inv_freq, d_q[0], shape.q_heads, kv};
    rope.rope.kv.k_pool = d_k[0];
    rope.rope.kv.v_pool = d_v[0];
    if (qk_norm) {
      rope.rope.q_norm = d_q_norm;
      rope.rope.k_norm = d_k_norm;
      rope.rope.norm_eps = composed_norm.eps;
    }
    ASSERT_TRUE(gemm.fused_supported(rows, in, out, x_in, w, rope));
    gemm.linear_fused(dtype, x_in, w, nullptr, rows, in, out, rope, nullptr);
    gemm.linear_fused(dtype, x_in, w, d_qkv, rows, in, out, f, nullptr);
    PagedKvCache kv1 = kv;
    kv1.k_pool = d_k[1];
    kv1.v_pool = d_v[1];
    ops::rope_and_cache(d_qkv, shape.bias ? d_bias : nullptr, d_positions, d_slots, d_inv_freq,
                        static_cast<int32_t>(rows), shape.q_heads, kv1, d_q[1], nullptr,
                        /*pdl=*/true, composed_norm, /*pair_rows=*/true);
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());

    const auto q0 = download(d_q[0], static_cast<size_t>(rows * q_dim));
    const auto q1 = download(d_q[1], q0.size());
    EXPECT_EQ(std::count(q1.begin(), q1.end(), uint16_t{0xffff}), 0) << "composition left q unset";
    int64_t q_diff = 0;
    for (size_t i = 0; i < q0.size(); ++i)
      if (q0[i] != q1[i] && q_diff++ < 3)
        ADD_FAILURE() << "q element " << i << ": " << q0[i] << " against " << q1[i];
    EXPECT_EQ(q_diff, 0) << "q elements that differ";
    const int64_t element = shape.fp8_cache ? 1 : 2;
    for (int pool = 0; pool < 2; ++pool) {
      const auto a = download(static_cast<uint8_t*>(pool == 0 ? d_k[0] : d_v[0]), pool_bytes);
      const auto b = download(static_cast<uint8_t*>(pool == 0 ? d_k[1] : d_v[1]), pool_bytes);
      int64_t diff = 0, written = 0;
      for (size_t i = 0; i < pool_bytes; ++i) {
        diff += a[i] != b[i];
        written += b[i] != 0x7f;
      }
      EXPECT_EQ(diff, 0) << (pool == 0 ? "k" : "v") << " pool bytes that differ";
      // A written byte may equal the poison now and then (a code 0x7f in a 16-bit half or, in an
      // fp8 cache, a NaN), so the count is a floor that a skipped row or head would miss.
      EXPECT_GE(written, kept * shape.kv_heads * d * element * 99 / 100)
          << (pool == 0 ? "k" : "v") << " pool: bytes written";
    }
    for (void* p :
         {static_cast<void*>(d_residual), static_cast<void*>(d_sumsq), static_cast<void*>(d_x),
          static_cast<void*>(d_positions), static_cast<void*>(d_slots), static_cast<void*>(d_qkv),
          static_cast<void*>(d_q[0]), static_cast<void*>(d_q[1]), d_k[0], d_k[1], d_v[0], d_v[1]})
      cudaFree(p);
  }
  for (void* p :
       {w, static_cast<void*>(d_w_scales), static_cast<void*>(d_bias), static_cast<void*>(d_gamma),
        static_cast<void*>(d_inv_freq), static_cast<void*>(d_scales), static_cast<void*>(d_q_norm),
        static_cast<void*>(d_k_norm)})
    cudaFree(p);
}

TEST_P(FusedGemv, RopeCacheEpilogueMatchesComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 800;
  for (const RopeShape& s : kRopeShapes) {
    for (const bool norm : {true, false}) check_rope(s, norm, GetParam(), ++seed);
    check_rope(s, false, GetParam(), ++seed, /*fp8=*/false, /*weighted=*/true);
  }
}

// Qwen3's q/k norm in the epilogue: the norm prologue (the fused layer), plain x (a GEMV step of
// the nine-kernel layer) and weighted x, 16-bit and fp8 weights and caches, head_dim 64 and 128
// (clusters of 4 and 8 blocks), one and two feature tiles per block ("wide MHA": clusters of 4).
TEST_P(FusedGemv, QkNormRopeCacheEpilogueMatchesComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 1000;
  for (const RopeShape& s : kRopeShapes) {
    if (s.head_dim != 64 && s.head_dim != 128) continue;
    for (const bool norm : {true, false})
      check_rope(s, norm, GetParam(), ++seed, /*fp8=*/false, /*weighted=*/false, /*qk_norm=*/true);
    check_rope(s, false, GetParam(), ++seed, /*fp8=*/false, /*weighted=*/true, /*qk_norm=*/true);
    if (s.hidden % 16 == 0)
      check_rope(s, true, GetParam(), ++seed, /*fp8=*/true, /*weighted=*/false, /*qk_norm=*/true);
  }
}

TEST_P(FusedGemv, Fp8RopeCacheEpilogueMatchesComposition) {
  L2KV_SKIP_WITHOUT_GPU();
  uint64_t seed = 900;
  for (const RopeShape& s : kRopeShapes) {
    if (s.hidden % 16 != 0) continue;
    for (const bool norm : {true, false}) check_rope(s, norm, GetParam(), ++seed, /*fp8=*/true);
    check_rope(s, false, GetParam(), ++seed, /*fp8=*/true, /*weighted=*/true);
  }
}

// What the fused forms refuse, on any machine.
TEST(FusedGemvSupports, NamesWhatEachFormNeeds) {
  alignas(16) static uint16_t w[16 * 16];
  alignas(16) static float residual[16 * 16];
  alignas(16) static uint16_t gamma[16];
  static RowSumsq sumsq[16];
  GemvFusion silu;
  silu.norm_residual = residual;
  silu.norm_weight = gamma;
  silu.norm_sumsq = sumsq;
  silu.epilogue = GemvEpilogue::kSiluMul;
  EXPECT_TRUE(gemv_supports(1, 16, 32, nullptr, w, silu));
  EXPECT_FALSE(gemv_supports(1, 16, 24, nullptr, w, silu)) << "out not a multiple of 16";
  silu.norm_sumsq = nullptr;
  EXPECT_FALSE(gemv_supports(1, 16, 32, nullptr, w, silu)) << "norm without sums of squares";
  GemvFusion plain_silu;  // SiLU x up over 16-bit x, no norm
  plain_silu.epilogue = GemvEpilogue::kSiluMul;
  EXPECT_TRUE(gemv_supports(1, 16, 32, gamma, w, plain_silu));
  EXPECT_FALSE(gemv_supports(1, 16, 32, nullptr, w, plain_silu)) << "no x";
  GemvFusion add;
  add.epilogue = GemvEpilogue::kResidualAdd;
  EXPECT_FALSE(gemv_supports(1, 16, 16, gamma, w, add)) << "residual epilogue without residual";
  add.residual = residual;
  EXPECT_TRUE(gemv_supports(1, 16, 16, gamma, w, add));
  EXPECT_FALSE(gemv_supports(17, 16, 16, gamma, w, add)) << "beyond kGemvMaxRows";
  alignas(16) static uint16_t q[64];
  alignas(16) static uint16_t pool[64];
  static int32_t positions[1], slots[1];
  static float inv_freq[8];
  GemvFusion rope;
  rope.epilogue = GemvEpilogue::kRopeCache;
  rope.rope = {nullptr, positions, slots, inv_freq, q, 2, {}};
  rope.rope.kv.k_pool = rope.rope.kv.v_pool = pool;
  rope.rope.kv.block_size = 16;
  rope.rope.kv.num_kv_heads = 1;
  rope.rope.kv.head_dim = 16;
  EXPECT_TRUE(gemv_supports(1, 16, 64, gamma, w, rope));
  EXPECT_FALSE(gemv_supports(1, 16, 48, gamma, w, rope)) << "out is not the heads' rows";
  rope.rope.kv.head_dim = 8;
  EXPECT_FALSE(gemv_supports(1, 16, 32, gamma, w, rope)) << "head_dim not a multiple of 16";
  rope.rope.kv.head_dim = 16;
  rope.rope.slots = nullptr;
  EXPECT_FALSE(gemv_supports(1, 16, 64, gamma, w, rope)) << "no slots";
  // The q/k norm: both weights, head_dim 64 or 128 (a head's blocks are one cluster of at most 8).
  rope.rope.slots = slots;
  rope.rope.kv.head_dim = 64;
  rope.rope.q_norm = rope.rope.k_norm = gamma;
  EXPECT_TRUE(gemv_supports(1, 16, 256, gamma, w, rope));
  rope.rope.k_norm = nullptr;
  EXPECT_FALSE(gemv_supports(1, 16, 256, gamma, w, rope)) << "a q norm without a k norm";
  rope.rope.k_norm = gamma;
  rope.rope.kv.head_dim = 16;
  EXPECT_FALSE(gemv_supports(1, 16, 64, gamma, w, rope)) << "head_dim 16 with the q/k norm";
  rope.rope.kv.head_dim = 256;
  EXPECT_FALSE(gemv_supports(1, 16, 1024, gamma, w, rope)) << "head_dim 256 with the q/k norm";
}

}  // namespace
}  // namespace l2kv
