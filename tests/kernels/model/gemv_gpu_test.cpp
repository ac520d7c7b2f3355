// The decode projections against a double-precision CPU reference: the mma.sync GEMV (rows
// 1..16) and Gemm's routing between it and cuBLASLt (rows 1..128), the projection
// shapes of Llama-3-8B, Qwen2.5-7B and Llama-2-7B and odd ones (in = 8, out = 1, partial
// tiles, k not a multiple of a stage), bf16 and fp16, 16-bit and fp32 output, outputs
// poisoned with NaN first. Weights are filled on the device (up to 1 GB for an LM head); large
// shapes are checked on a sample of output features (the first and last tiles and random
// ones) and fully for finiteness.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/device_array.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/kernels/model/gemv.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/random_fill.h"

namespace l2kv {
namespace {

struct Shape {
  const char* name;
  int64_t in, out;
};

// in x out of each projection (QKV and gate/up fused, as the CUDA model stores them).
const std::vector<Shape> kModelShapes = {
    {"llama3-8b qkv", 4096, 6144},       {"llama3-8b o", 4096, 4096},
    {"llama3-8b gate_up", 4096, 28672},  {"llama3-8b down", 14336, 4096},
    {"llama3-8b lm_head", 4096, 128256}, {"qwen2.5-7b qkv", 3584, 4608},
    {"qwen2.5-7b o", 3584, 3584},        {"qwen2.5-7b gate_up", 3584, 37888},
    {"qwen2.5-7b down", 18944, 3584},    {"qwen2.5-7b lm_head", 3584, 152064},
    {"llama2-7b qkv", 4096, 12288},      {"llama2-7b o", 4096, 4096},
    {"llama2-7b gate_up", 4096, 22016},  {"llama2-7b down", 11008, 4096},
    {"llama2-7b lm_head", 4096, 32000},
};

// Odd shapes: a single vector, a single feature, features not a multiple of the block's 16,
// `in` ending mid-iteration (the partial last iteration falls to warps 0, 1, 4, 6 or 7 of a
// block), fewer iterations than warps.
const std::vector<Shape> kOddShapes = {
    {"in8 out1", 8, 1},
    {"in8 out17", 8, 17},
    {"in24 out33", 24, 33},
    {"in136 out100", 136, 100},
    {"in1032 out7", 1032, 7},
    {"in4104 out1000", 4104, 1000},
    {"in2048 out31", 2048, 31},
    {"in264 out4097", 264, 4097},
    {"in1832 out48", 1832, 48},
    {"in72 out200", 72, 200},
    {"in4168 out130", 4168, 130},
    {"in8200 out2000", 8200, 2000},
    // On a 132-SM GPU, 9-16 rows run two tiles per warp here (265 tiles, 133 blocks of 32
    // features), the last block 8 features.
    {"in1032 out4232", 1032, 4232},
};

constexpr int64_t kMaxCheckedFeatures = 160;

// Output features to check: all of a small problem, else the first and last 32 (first and
// last blocks, a partial tile) and random ones between.
std::vector<int64_t> checked_features(int64_t out, std::mt19937_64& rng) {
  std::vector<int64_t> f;
  if (out <= kMaxCheckedFeatures) {
    for (int64_t n = 0; n < out; ++n) f.push_back(n);
    return f;
  }
  for (int64_t n = 0; n < 32; ++n) f.push_back(n), f.push_back(out - 1 - n);
  std::uniform_int_distribution<int64_t> pick(32, out - 33);
  while (static_cast<int64_t>(f.size()) < kMaxCheckedFeatures) f.push_back(pick(rng));
  std::sort(f.begin(), f.end());
  f.erase(std::unique(f.begin(), f.end()), f.end());
  return f;
}

// Per-element tolerance |y - ref| <= atol + rtol |ref|. rtol: twice the half-ulp rounding of
// the output type (16-bit outputs round once). atol: fp32 accumulation-order noise, which
// grows like sqrt(in) times the typical |x w| (1/3 for uniform [-1, 1) inputs) times the fp32
// epsilon times the partial-sum size (another sqrt(in)); kNoiseMargin x that. With in = 4096:
// atol 5e-3 and a typical |ref| of 20, so the bound is ~0.09 for bf16 output while a 1 % scale
// error is ~0.2 and a dropped 8-wide k vector ~1 (GemvTolerance checks this).
struct Tolerance {
  double atol, rtol;
};
Tolerance tolerance(DType dtype, bool f32_out, int64_t in) {
  constexpr double kNoiseMargin = 64;
  constexpr double kF32Eps = 0x1p-24;
  const double rtol = f32_out ? 0x1p-20 : (dtype == DType::kBFloat16 ? 0x1p-8 : 0x1p-10);
  return {kNoiseMargin * kF32Eps * static_cast<double>(in) / 3.0 + 1e-6, rtol};
}

std::string describe(const Shape& s, DType dtype, bool f32_out, int64_t rows) {
  return std::string(s.name) + " " + std::string(dtype_name(dtype)) +
         (f32_out ? " f32-out" : " 16-bit-out") + " rows=" + std::to_string(rows);
}

// Runs `launch(x, w, y, f32_out, rows)` for rows in `row_counts` and both output types on
// fresh random x, one device-filled W of `shape`, and checks against the double reference.
template <typename Launch>
void check_shape(const Shape& shape, DType dtype, const std::vector<int64_t>& row_counts,
                 uint64_t seed, Launch launch) {
  const int64_t in = shape.in, out = shape.out;
  DeviceArray<uint16_t> w(static_cast<size_t>(in * out));
  fill_random(w.ptr, in * out, dtype, 1.f, seed, nullptr);
  std::mt19937_64 rng(seed);
  const std::vector<int64_t> features = checked_features(out, rng);
  // The checked rows of W, as doubles.
  std::vector<double> w_rows(features.size() * in);
  {
    std::vector<uint16_t> bits(in);
    for (size_t i = 0; i < features.size(); ++i) {
      L2KV_CUDA_CHECK(
          cudaMemcpy(bits.data(), w.ptr + features[i] * in, in * 2, cudaMemcpyDeviceToHost));
      for (int64_t k = 0; k < in; ++k) w_rows[i * in + k] = dtype_bits_to_float(dtype, bits[k]);
    }
  }
  const int64_t max_rows = *std::max_element(row_counts.begin(), row_counts.end());
  DeviceArray<uint16_t> x(static_cast<size_t>(max_rows * in));
  DeviceArray<float> y(static_cast<size_t>(max_rows * out));  // room for either output type
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  for (const int64_t rows : row_counts) {
    std::vector<uint16_t> x_bits(rows * in);
    std::vector<double> x_vals(rows * in);
    for (size_t i = 0; i < x_bits.size(); ++i) {
      x_bits[i] = float_to_dtype_bits(dtype, uniform(rng));
      x_vals[i] = dtype_bits_to_float(dtype, x_bits[i]);
    }
    L2KV_CUDA_CHECK(cudaMemcpy(x.ptr, x_bits.data(), x_bits.size() * 2, cudaMemcpyHostToDevice));
    std::vector<double> ref(rows * features.size());
    for (int64_t m = 0; m < rows; ++m)
      for (size_t i = 0; i < features.size(); ++i) {
        double sum = 0;
        const double* xr = x_vals.data() + m * in;
        const double* wr = w_rows.data() + i * in;
        for (int64_t k = 0; k < in; ++k) sum += xr[k] * wr[k];
        ref[m * features.size() + i] = sum;
      }
    for (const bool f32_out : {false, true}) {
      SCOPED_TRACE(describe(shape, dtype, f32_out, rows));
      L2KV_CUDA_CHECK(cudaMemset(y.ptr, 0xff, y.size() * sizeof(float)));  // NaN either way
      launch(x.ptr, w.ptr, y.ptr, f32_out, rows);
      L2KV_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<double> got(rows * out);
      if (f32_out) {
        std::vector<float> v(rows * out);
        L2KV_CUDA_CHECK(cudaMemcpy(v.data(), y.ptr, v.size() * 4, cudaMemcpyDeviceToHost));
        std::copy(v.begin(), v.end(), got.begin());
      } else {
        std::vector<uint16_t> v(rows * out);
        L2KV_CUDA_CHECK(cudaMemcpy(v.data(), y.ptr, v.size() * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < v.size(); ++i) got[i] = dtype_bits_to_float(dtype, v[i]);
      }
      const int64_t non_finite =
          std::count_if(got.begin(), got.end(), [](double v) { return !std::isfinite(v); });
      EXPECT_EQ(non_finite, 0) << "unwritten or non-finite outputs";
      const Tolerance tol = tolerance(dtype, f32_out, in);
      int64_t bad = 0;
      double worst = 0;
      for (int64_t m = 0; m < rows; ++m)
        for (size_t i = 0; i < features.size(); ++i) {
          const double r = ref[m * features.size() + i], v = got[m * out + features[i]];
          const double excess = std::abs(v - r) - (tol.atol + tol.rtol * std::abs(r));
          if (!(excess <= 0)) {
            if (bad < 3)
              ADD_FAILURE() << "y[" << m << "][" << features[i] << "] = " << v << ", reference "
                            << r;
            ++bad;
          }
          worst = std::max(worst, std::abs(v - r) / (tol.atol + tol.rtol * std::abs(r)));
        }
      EXPECT_EQ(bad, 0) << "elements outside tolerance; worst error / tolerance " << worst;
    }
  }
}

std::vector<int64_t> all_row_counts() {
  std::vector<int64_t> rows;
  for (int64_t m = 1; m <= kGemvMaxRows; ++m) rows.push_back(m);
  return rows;
}

auto direct_launch(DType dtype, const Shape& shape) {
  return [dtype, shape](const void* x, const void* w, void* y, bool f32_out, int64_t rows) {
    gemv(dtype, x, w, y, f32_out, rows, shape.in, shape.out, nullptr);
  };
}

class GemvDtype : public ::testing::TestWithParam<DType> {};

TEST_P(GemvDtype, OddShapesMatchReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  uint64_t seed = 100;
  for (const auto& shape : kOddShapes)
    check_shape(shape, dtype, all_row_counts(), ++seed, direct_launch(dtype, shape));
}

TEST_P(GemvDtype, ModelShapesMatchReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  const std::vector<int64_t> rows =
      testing::quick_mode() ? std::vector<int64_t>{1, 8, 9, 16} : all_row_counts();
  uint64_t seed = 200;
  for (const auto& shape : kModelShapes)
    check_shape(shape, dtype, rows, ++seed, direct_launch(dtype, shape));
}

// Gemm routes rows <= its GEMV limit to the kernel and the rest to cuBLASLt; every limit must
// give the reference's answer on either side of it.
TEST_P(GemvDtype, GemmRoutingMatchesReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  const Shape shape{"routing in1024 out520", 1024, 520};
  Gemm gemm;
  EXPECT_EQ(gemm.gemv_max_rows(), Gemm::kDefaultGemvMaxRows);
  auto launch = [&](const void* x, const void* w, void* y, bool f32_out, int64_t rows) {
    if (f32_out)
      gemm.linear_f32_out(dtype, x, w, static_cast<float*>(y), rows, shape.in, shape.out, nullptr);
    else
      gemm.linear(dtype, x, w, y, rows, shape.in, shape.out, nullptr);
  };
  uint64_t seed = 300;
  for (const int limit : {0, Gemm::kDefaultGemvMaxRows, static_cast<int>(kGemvMaxRows)}) {
    SCOPED_TRACE("gemv_max_rows=" + std::to_string(limit));
    gemm.set_gemv_max_rows(limit);
    check_shape(shape, dtype, {1, 7, 8, 9, 16, 17, 128}, ++seed, launch);
  }
}

// Prompt-sized shapes share one timed algorithm per bucket of row counts: the first shape of a
// bucket times cuBLASLt's candidates, the next ones reuse the choice (where cuBLASLt accepts it
// for their descriptors), and all of them must give the reference's answer.
TEST_P(GemvDtype, PromptBucketsMatchReference) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  const Shape shape{"prompt buckets in1024 out520", 1024, 520};
  Gemm gemm;
  gemm.set_prompt_tune_max_rows(1024);
  auto launch = [&](const void* x, const void* w, void* y, bool f32_out, int64_t rows) {
    if (f32_out)
      gemm.linear_f32_out(dtype, x, w, static_cast<float*>(y), rows, shape.in, shape.out, nullptr);
    else
      gemm.linear(dtype, x, w, y, rows, shape.in, shape.out, nullptr);
  };
  // 300 times bucket 384 and 333 reuses it; 700 times 768; 1100 is past the limit (untimed).
  check_shape(shape, dtype, {300, 333, 384, 700, 1100}, 350, launch);
}

TEST(GemmPromptBuckets, TwoAnOctave) {
  const std::vector<std::pair<int64_t, int64_t>> expected{
      {257, 384},   {384, 384},   {385, 512},   {512, 512},   {513, 768},   {1025, 1536},
      {2048, 2048}, {2064, 3072}, {3073, 4096}, {8192, 8192}, {8193, 12288}};
  for (const auto& [rows, bucket] : expected)
    EXPECT_EQ(Gemm::prompt_tune_bucket(rows), bucket) << rows << " rows";
}

// Where two 16-bit outputs y[rows][out] differ: the count, the rows and features spanned, and
// each one's max relative distance from a third (a cuBLASLt reference), so a mismatch says
// which side is wrong and what shape the wrong region has.
std::string describe_difference(const std::vector<uint16_t>& got,
                                const std::vector<uint16_t>& expected,
                                const std::vector<uint16_t>& reference, int64_t out, DType dtype) {
  int64_t count = 0, m_lo = INT64_MAX, m_hi = -1, n_lo = INT64_MAX, n_hi = -1;
  double scale = 0, got_err = 0, expected_err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double r = dtype_bits_to_float(dtype, reference[i]);
    scale = std::max(scale, std::abs(r));
    got_err = std::max(got_err, std::abs(dtype_bits_to_float(dtype, got[i]) - r));
    expected_err = std::max(expected_err, std::abs(dtype_bits_to_float(dtype, expected[i]) - r));
    if (got[i] == expected[i]) continue;
    ++count;
    const int64_t m = static_cast<int64_t>(i) / out, n = static_cast<int64_t>(i) % out;
    m_lo = std::min(m_lo, m), m_hi = std::max(m_hi, m), n_lo = std::min(n_lo, n),
    n_hi = std::max(n_hi, n);
  }
  return std::to_string(count) + " of " + std::to_string(got.size()) + " differ (rows " +
         std::to_string(m_lo) + ".." + std::to_string(m_hi) + ", features " + std::to_string(n_lo) +
         ".." + std::to_string(n_hi) + "); max |y - cuBLASLt| / max |cuBLASLt|: this run " +
         std::to_string(got_err / scale) + ", plain launch " + std::to_string(expected_err / scale);
}

// With programmatic dependent launch the GEMV starts while the kernel ahead of it runs (here
// the RMSNorm that writes x and lets its dependents start at entry, as in a decode step) and
// must read x only after its wait: x is NaN until the norm writes it, and the output must equal
// bit for bit that of a plain launch after the norm, eager and in a CUDA graph.
// `launch(x, w, y, rows, in, out, stream, pdl)` runs the projection under test.
template <typename Launch>
void check_programmatic_launch(DType dtype, const std::vector<int64_t>& row_counts, Launch launch) {
  cudaStream_t stream = nullptr;
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  uint64_t seed = 400;
  for (const Shape shape :
       {Shape{"llama3-8b qkv", 4096, 6144}, Shape{"llama3-8b down", 14336, 4096}})
    for (const int64_t rows : row_counts) {
      SCOPED_TRACE(describe(shape, dtype, false, rows));
      const int64_t in = shape.in, out = shape.out;
      DeviceArray<uint16_t> w(static_cast<size_t>(in * out)), norm_weight(in), x(rows * in);
      DeviceArray<uint16_t> y(rows * out);
      DeviceArray<float> residual(rows * in);
      fill_random(w.ptr, in * out, dtype, 1.f, ++seed, nullptr);
      fill_random(norm_weight.ptr, in, dtype, 1.f, ++seed, nullptr);
      std::mt19937_64 rng(++seed);
      std::uniform_real_distribution<float> uniform(-1.f, 1.f);
      std::vector<float> residual_host(rows * in);
      for (float& v : residual_host) v = uniform(rng);
      L2KV_CUDA_CHECK(cudaMemcpy(residual.ptr, residual_host.data(), residual_host.size() * 4,
                                 cudaMemcpyHostToDevice));
      auto step = [&](bool pdl) {
        L2KV_CUDA_CHECK(cudaMemsetAsync(x.ptr, 0xff, x.size() * 2, stream));  // NaN
        L2KV_CUDA_CHECK(cudaMemsetAsync(y.ptr, 0xff, y.size() * 2, stream));
        ops::add_rmsnorm(dtype, residual.ptr, nullptr, norm_weight.ptr, 1e-5f,
                         static_cast<int32_t>(rows), static_cast<int32_t>(in), x.ptr, stream);
        launch(x.ptr, w.ptr, y.ptr, rows, in, out, stream, pdl);
      };
      auto result = [&] {
        L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
        std::vector<uint16_t> v(y.size());
        L2KV_CUDA_CHECK(cudaMemcpy(v.data(), y.ptr, v.size() * 2, cudaMemcpyDeviceToHost));
        return v;
      };
      auto read_x = [&] {
        std::vector<uint16_t> v(x.size());
        L2KV_CUDA_CHECK(cudaMemcpy(v.data(), x.ptr, v.size() * 2, cudaMemcpyDeviceToHost));
        return v;
      };
      step(false);
      const std::vector<uint16_t> expected = result();
      const std::vector<uint16_t> x_expected = read_x();
      ASSERT_TRUE(std::all_of(expected.begin(), expected.end(), [&](uint16_t b) {
        return std::isfinite(dtype_bits_to_float(dtype, b));
      }));
      // cuBLASLt on the norm's output (still in x), for the diagnosis of a mismatch.
      DeviceArray<uint16_t> y_reference(rows * out);
      std::vector<uint16_t> reference(y_reference.size());
      {
        Gemm cublas;
        cublas.set_gemv_max_rows(0);
        cublas.linear(dtype, x.ptr, w.ptr, y_reference.ptr, rows, in, out, stream);
        L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
        L2KV_CUDA_CHECK(cudaMemcpy(reference.data(), y_reference.ptr, reference.size() * 2,
                                   cudaMemcpyDeviceToHost));
      }
      // On a mismatch, also which outputs are NaN (x read before the norm wrote it) and whether
      // the norm's x itself came out different.
      auto check = [&](const std::vector<uint16_t>& got, const std::string& what) {
        if (got == expected) return;
        int64_t nan_outputs = 0, x_rows_differ = 0, x_first = -1;
        for (uint16_t b : got) nan_outputs += std::isnan(dtype_bits_to_float(dtype, b));
        const std::vector<uint16_t> x_now = read_x();
        for (int64_t r = 0; r < rows; ++r)
          if (!std::equal(x_now.begin() + r * in, x_now.begin() + (r + 1) * in,
                          x_expected.begin() + r * in)) {
            ++x_rows_differ;
            if (x_first < 0) x_first = r;
          }
        ADD_FAILURE() << what << ": " << describe_difference(got, expected, reference, out, dtype)
                      << "; " << nan_outputs << " outputs NaN; x after the step differs from the "
                      << "plain step's in " << x_rows_differ << " rows (first " << x_first << ")";
      };
      for (int repeat = 0; repeat < 3; ++repeat) {
        step(true);
        check(result(), "eager, repeat " + std::to_string(repeat));
      }
      cudaGraph_t graph = nullptr;
      cudaGraphExec_t exec = nullptr;
      L2KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      step(true);
      L2KV_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
      L2KV_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
      for (int repeat = 0; repeat < 3; ++repeat) {
        L2KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        check(result(), "graph, repeat " + std::to_string(repeat));
      }
      cudaGraphExecDestroy(exec);
      cudaGraphDestroy(graph);
    }
  cudaStreamDestroy(stream);
}

TEST_P(GemvDtype, ProgrammaticLaunchReadsXOnlyAfterTheKernelAhead) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType dtype = GetParam();
  check_programmatic_launch(dtype, {1, 8, 16},
                            [&](const void* x, const void* w, void* y, int64_t rows, int64_t in,
                                int64_t out, cudaStream_t stream, bool pdl) {
                              gemv(dtype, x, w, y, false, rows, in, out, stream, pdl);
                            });
}

// The checks themselves: a 1 % scale error and a dropped 8-wide k vector both fail the
// tolerance for the largest real `in`.
TEST(GemvTolerance, RejectsScaleErrorsAndDroppedVectors) {
  const int64_t in = 4096;
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> uniform(-1, 1);
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (const bool f32_out : {false, true}) {
      const Tolerance tol = tolerance(dtype, f32_out, in);
      int64_t scale_caught = 0, drop_caught = 0;
      constexpr int kTrials = 100;
      for (int trial = 0; trial < kTrials; ++trial) {
        std::vector<double> p(in);
        for (auto& v : p) v = uniform(rng) * uniform(rng);
        double sum = 0, dropped = 0;
        for (int64_t k = 0; k < in; ++k) sum += p[k];
        for (int64_t k = 0; k < 8; ++k) dropped += p[k];
        const double bound = tol.atol + tol.rtol * std::abs(sum);
        scale_caught += std::abs(0.01 * sum) > bound;
        drop_caught += std::abs(dropped) > bound;
      }
      EXPECT_GE(scale_caught, kTrials * 8 / 10) << dtype_name(dtype) << " f32_out=" << f32_out;
      EXPECT_GE(drop_caught, kTrials * 8 / 10) << dtype_name(dtype) << " f32_out=" << f32_out;
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemvDtype, ::testing::Values(DType::kBFloat16, DType::kFloat16),
                         [](const auto& param_info) {
                           return std::string(dtype_name(param_info.param));
                         });

TEST(GemvSupports, NamesItsLimits) {
  alignas(16) static uint16_t buffer[64];
  const void* a = buffer;
  const void* misaligned = buffer + 1;
  EXPECT_TRUE(gemv_supports(1, 8, 1, a, a));
  EXPECT_TRUE(gemv_supports(16, 4096, 128256, a, a));
  EXPECT_FALSE(gemv_supports(0, 8, 1, a, a));
  EXPECT_FALSE(gemv_supports(17, 8, 1, a, a));
  EXPECT_FALSE(gemv_supports(1, 12, 1, a, a));  // not a multiple of 8
  EXPECT_FALSE(gemv_supports(1, 0, 1, a, a));
  EXPECT_FALSE(gemv_supports(1, 8, 0, a, a));
  EXPECT_FALSE(gemv_supports(1, 8, 1, misaligned, a));
  EXPECT_FALSE(gemv_supports(1, 8, 1, a, misaligned));
  // Refused before any launch, so no GPU is needed to see it.
  EXPECT_THROW(gemv(DType::kBFloat16, a, a, buffer, false, 17, 8, 1, nullptr), Error);
}

TEST(GemvSupports, GemmLimitIsChecked) {
  L2KV_SKIP_WITHOUT_GPU();  // constructing Gemm creates a cuBLASLt handle
  Gemm gemm;
  EXPECT_THROW(gemm.set_gemv_max_rows(-1), Error);
  EXPECT_THROW(gemm.set_gemv_max_rows(static_cast<int>(kGemvMaxRows) + 1), Error);
  gemm.set_gemv_max_rows(0);
  EXPECT_EQ(gemm.gemv_max_rows(), 0);
}

}  // namespace
}  // namespace l2kv
