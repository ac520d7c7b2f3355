// The fp8-weight GEMV (gemv_fp8.h) and dequantize_fp8 against a double-precision host
// reference: random E4M3 weights (every finite code but the largest exponents), random 16-bit
// x, per-channel and per-tensor scales, bf16 and fp16, rows 1-128 (one block per 16 features,
// then row groups), model and odd shapes, outputs poisoned with NaN first. Then the products of
// more rows (Gemm::linear_fp8): x quantized per token (fp8_activations.h, bit for bit against
// the host's rounding) and multiplied in fp8 on cuBLASLt, against the host's product of the same
// codes, per row at the output's rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/model/fp8_activations.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/kernels/model/gemv_fp8.h"

namespace l2kv {
namespace {

template <typename T>
struct Device {
  explicit Device(const std::vector<T>& host) : n(host.size()) {
    L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(n, 1) * sizeof(T)));
    L2KV_CUDA_CHECK(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Device() { cudaFree(ptr); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  std::vector<T> read() const {
    std::vector<T> host(n);
    L2KV_CUDA_CHECK(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  T* ptr = nullptr;
  size_t n;
};

struct Problem {
  int64_t in, out;
  std::vector<uint8_t> w;  // E4M3 codes
  std::vector<float> scale;
  bool per_channel;
};

// Codes with exponent fields 0-12 (subnormals up to 2^5): no NaN, magnitudes up to ~60.
Problem make_problem(int64_t in, int64_t out, bool per_channel, std::mt19937_64& rng) {
  Problem p{in, out, {}, {}, per_channel};
  std::uniform_int_distribution<int> exponent(0, 12), mantissa(0, 7), sign(0, 1);
  p.w.resize(static_cast<size_t>(in * out));
  for (uint8_t& c : p.w)
    c = static_cast<uint8_t>(sign(rng) << 7 | exponent(rng) << 3 | mantissa(rng));
  std::uniform_real_distribution<float> s(0.002f, 0.02f);
  p.scale.resize(per_channel ? static_cast<size_t>(out) : 1);
  for (float& v : p.scale) v = s(rng);
  return p;
}

std::vector<uint16_t> random_x(DType dtype, int64_t rows, int64_t in, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<uint16_t> x(static_cast<size_t>(rows * in));
  for (uint16_t& v : x) v = float_to_dtype_bits(dtype, u(rng));
  return x;
}

// y[m, n] against sum_k x w * scale in double: |y - ref| <= rtol |ref| + atol, with rtol the
// output's rounding (half an ulp, doubled) and atol 64 fp32 epsilons of sum_k |x w| * scale
// (the fp32 accumulation's error bound, with margin). A 1 % scale error or a dropped 16-k
// vector exceeds it (FailsWhenWrong below checks the first).
void check_outputs(DType dtype, const Problem& p, const std::vector<uint16_t>& x, int64_t rows,
                   const std::vector<uint16_t>& y, const std::string& what, float scale_error = 1.f,
                   bool expect_pass = true) {
  const double rtol = dtype == DType::kBFloat16 ? 0x1p-8 : 0x1p-10;
  int64_t bad = 0;
  for (int64_t m = 0; m < rows; ++m)
    for (int64_t n = 0; n < p.out; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < p.in; ++k) {
        const double xv = dtype_bits_to_float(dtype, x[static_cast<size_t>(m * p.in + k)]);
        const double wv = fp8_e4m3_bits_to_float(p.w[static_cast<size_t>(n * p.in + k)]);
        ref += xv * wv;
        mag += std::abs(xv * wv);
      }
      const double s = p.scale[p.per_channel ? static_cast<size_t>(n) : 0] * scale_error;
      ref *= s;
      mag *= s;
      const double got = dtype_bits_to_float(dtype, y[static_cast<size_t>(m * p.out + n)]);
      const double tol = rtol * std::abs(ref) + 64 * 0x1p-24 * mag;
      if (!(std::abs(got - ref) <= tol)) {
        if (expect_pass && bad < 5)
          ADD_FAILURE() << what << " y[" << m << ", " << n << "] = " << got << ", want " << ref
                        << " +- " << tol;
        ++bad;
      }
    }
  if (!expect_pass) {
    EXPECT_GT(bad, 0) << what << ": a 1 % scale error went unnoticed";
  }
}

std::vector<uint16_t> run(DType dtype, const Problem& p, const std::vector<uint16_t>& x,
                          int64_t rows) {
  Device<uint8_t> w(p.w);
  Device<float> scale(p.scale);
  Device<uint16_t> dx(x);
  Device<uint16_t> y(std::vector<uint16_t>(static_cast<size_t>(rows * p.out), 0xffff));  // NaN
  gemv_fp8(dtype, dx.ptr, {w.ptr, scale.ptr, p.per_channel}, y.ptr, rows, p.in, p.out, nullptr);
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  return y.read();
}

TEST(GemvFp8, MatchesTheHostReference) {
  L2KV_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(20261203);
  struct Shape {
    int64_t in, out;
  };
  // A single vector, one feature, partial feature blocks, k ending mid-iteration, fewer
  // iterations than warps, and Llama-3-8B's o and down at full size.
  const Shape shapes[] = {{16, 1},     {48, 33},   {272, 100},  {4112, 17},
                          {1040, 300}, {4096, 64}, {14336, 48}, {64, 4097}};
  for (DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (const Shape& s : shapes)
      for (int64_t rows : {1, 3, 8, 9, 16, 17, 40, 128}) {
        if (s.in * s.out * rows > (int64_t{1} << 27)) continue;  // host reference time
        const bool per_channel = (s.out + rows) % 2 == 0;
        const Problem p = make_problem(s.in, s.out, per_channel, rng);
        const auto x = random_x(dtype, rows, s.in, rng);
        const std::string what = std::string(dtype_name(dtype)) + " in=" + std::to_string(s.in) +
                                 " out=" + std::to_string(s.out) + " rows=" + std::to_string(rows) +
                                 (per_channel ? " per-channel" : " per-tensor");
        check_outputs(dtype, p, x, rows, run(dtype, p, x, rows), what);
      }
}

TEST(GemvFp8, FailsWhenWrong) {
  L2KV_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(7);
  const Problem p = make_problem(4096, 64, true, rng);
  const auto x = random_x(DType::kBFloat16, 4, 4096, rng);
  check_outputs(DType::kBFloat16, p, x, 4, run(DType::kBFloat16, p, x, 4), "1 % off", 1.01f, false);
}

TEST(GemvFp8, DequantizeIsScaleTimesCodeRounded) {
  L2KV_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(11);
  for (DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (bool per_channel : {true, false}) {
      const Problem p = make_problem(272, 37, per_channel, rng);
      Device<uint8_t> w(p.w);
      Device<float> scale(p.scale);
      Device<uint16_t> out(std::vector<uint16_t>(p.w.size(), 0xffff));
      dequantize_fp8(dtype, {w.ptr, scale.ptr, per_channel}, p.out, p.in, out.ptr, nullptr);
      L2KV_CUDA_CHECK(cudaDeviceSynchronize());
      const auto got = out.read();
      for (size_t i = 0; i < got.size(); ++i) {
        const float s = p.scale[per_channel ? i / static_cast<size_t>(p.in) : 0];
        const uint16_t want = float_to_dtype_bits(dtype, s * fp8_e4m3_bits_to_float(p.w[i]));
        ASSERT_EQ(got[i], want) << dtype_name(dtype) << " element " << i;
      }
    }
}

// The host's per-token quantization, as quantize_rows_fp8 specifies it.
void quantize_on_host(DType dtype, const std::vector<uint16_t>& x, int64_t rows, int64_t in,
                      std::vector<uint8_t>& codes, std::vector<float>& scales) {
  codes.resize(x.size());
  scales.resize(static_cast<size_t>(rows));
  for (int64_t m = 0; m < rows; ++m) {
    float amax = 0.f;
    for (int64_t k = 0; k < in; ++k)
      amax =
          std::max(amax, std::fabs(dtype_bits_to_float(dtype, x[static_cast<size_t>(m * in + k)])));
    const float s = amax > 0.f ? amax / 448.f : 1.f;
    scales[static_cast<size_t>(m)] = s;
    for (int64_t k = 0; k < in; ++k) {
      const size_t i = static_cast<size_t>(m * in + k);
      codes[i] = float_to_fp8_e4m3_bits(dtype_bits_to_float(dtype, x[i]) / s);
    }
  }
}

TEST(Fp8Activations, RowsQuantizeAsTheHostRoundsThem) {
  L2KV_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(31);
  for (DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (int64_t in : {8, 264, 4096}) {
      const int64_t rows = 5;
      std::vector<uint16_t> x = random_x(dtype, rows, in, rng);
      for (int64_t k = 0; k < in; ++k) {
        x[static_cast<size_t>(in + k)] = float_to_dtype_bits(dtype, 0.f);  // a row of zeros
        // A row spanning E4M3's range: its small values go subnormal or to zero.
        const float v = std::ldexp(1.f, static_cast<int>(k % 24) - 12) * (k % 2 ? -1.f : 1.f);
        x[static_cast<size_t>(2 * in + k)] = float_to_dtype_bits(dtype, v);
      }
      std::vector<uint8_t> want_codes;
      std::vector<float> want_scales;
      quantize_on_host(dtype, x, rows, in, want_codes, want_scales);
      Device<uint16_t> dx(x);
      Device<uint8_t> codes(std::vector<uint8_t>(x.size(), 0x7f));  // NaN codes
      Device<float> scales(std::vector<float>(static_cast<size_t>(rows), -1.f));
      quantize_rows_fp8(dtype, dx.ptr, rows, in, codes.ptr, scales.ptr, nullptr);
      L2KV_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_EQ(scales.read(), want_scales) << dtype_name(dtype) << " in=" << in;
      EXPECT_EQ(codes.read(), want_codes) << dtype_name(dtype) << " in=" << in;
    }
  alignas(16) static uint16_t x[16];
  alignas(16) static uint8_t c[16];
  static float s[1];
  EXPECT_THROW(quantize_rows_fp8(DType::kBFloat16, x, 1, 12, c, s, nullptr), Error);
  EXPECT_THROW(quantize_rows_fp8(DType::kBFloat16, x + 1, 1, 8, c, s, nullptr), Error);
  EXPECT_THROW(quantize_rows_fp8(DType::kBFloat16, x, 0, 8, c, s, nullptr), Error);
}

// Per-row relative L2 distance of y from the host product (the largest row): with `w8a8`, of
// the quantized rows and the fp8 weights, both scales applied to the sum, the weight scales
// times `scale_error`; without, of the 16-bit x and the weights widened as dequantize_fp8 does
// (scale x code rounded to the dtype).
double product_error(DType dtype, const Problem& p, const std::vector<uint16_t>& x, int64_t rows,
                     const std::vector<uint16_t>& y, bool w8a8, float scale_error = 1.f) {
  std::vector<uint8_t> codes;
  std::vector<float> row_scales;
  quantize_on_host(dtype, x, rows, p.in, codes, row_scales);
  std::vector<double> widened(p.w.size());
  for (size_t i = 0; i < widened.size(); ++i) {
    const float s = p.scale[p.per_channel ? i / static_cast<size_t>(p.in) : 0];
    widened[i] =
        dtype_bits_to_float(dtype, float_to_dtype_bits(dtype, s * fp8_e4m3_bits_to_float(p.w[i])));
  }
  double worst = 0;
  for (int64_t m = 0; m < rows; ++m) {
    double diff = 0, norm = 0;
    for (int64_t n = 0; n < p.out; ++n) {
      double ref = 0;
      const size_t row = static_cast<size_t>(m * p.in), col = static_cast<size_t>(n * p.in);
      if (w8a8) {
        for (int64_t k = 0; k < p.in; ++k)
          ref += double(fp8_e4m3_bits_to_float(codes[row + static_cast<size_t>(k)])) *
                 fp8_e4m3_bits_to_float(p.w[col + static_cast<size_t>(k)]);
        ref *= double(row_scales[static_cast<size_t>(m)]) *
               p.scale[p.per_channel ? static_cast<size_t>(n) : 0] * scale_error;
      } else {
        for (int64_t k = 0; k < p.in; ++k)
          ref += double(dtype_bits_to_float(dtype, x[row + static_cast<size_t>(k)])) *
                 widened[col + static_cast<size_t>(k)];
      }
      const double got = dtype_bits_to_float(dtype, y[static_cast<size_t>(m * p.out + n)]);
      diff += (got - ref) * (got - ref);
      norm += ref * ref;
      if (!std::isfinite(got)) return INFINITY;
    }
    worst = std::max(worst, std::sqrt(diff / norm));
  }
  return worst;
}

// Rows past the fp8 GEMV's through Gemm::linear_fp8 (33 and 64 rows scaled after cuBLASLt's
// product, 200 by its outer-vector scaling): with per-channel scales every row within
// the output's rounding of the host product of the same codes (bf16 rounds to 2^-9: rows of 16
// outputs measured up to 3.0e-3 on an H200, fp16 6e-4; a 1 % scale error is 1e-2), at least
// for Llama-sized shapes;
// a shape cuBLASLt has no fp8 product for, per-tensor scales and `in` or `out` not a multiple
// of 16 widen the weights instead (16-bit x, unquantized): those match the GEMV's reference.
TEST(Fp8Gemm, ProductsOfManyRowsRunInFp8OnTheQuantizedRows) {
  L2KV_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(20261204);
  struct Shape {
    int64_t in, out;
  };
  const Shape shapes[] = {{256, 384}, {4096, 1024}, {1040, 304}, {14336, 16}};
  Gemm gemm;
  double worst[2] = {0, 0};
  for (DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (const Shape& s : shapes)
      for (int64_t rows : {33, 64, 200})
        for (bool per_channel : {true, false}) {
          if (s.in * s.out * rows > (int64_t{1} << 26) && rows != 64) continue;  // host time
          const Problem p = make_problem(s.in, s.out, per_channel, rng);
          const auto x = random_x(dtype, rows, s.in, rng);
          Device<uint8_t> w(p.w);
          Device<float> scale(p.scale);
          Device<uint16_t> dx(x);
          Device<uint16_t> y(std::vector<uint16_t>(static_cast<size_t>(rows * p.out), 0xffff));
          Device<uint8_t> codes(std::vector<uint8_t>(static_cast<size_t>(rows * s.in), 0x7f));
          Device<float> row_scales(std::vector<float>(static_cast<size_t>(rows), -1.f));
          Device<uint16_t> widened(std::vector<uint16_t>(static_cast<size_t>(s.in * s.out)));
          Device<float> product(std::vector<float>(static_cast<size_t>(rows * s.out), NAN));
          EXPECT_FALSE(gemm.linear_fp8(
              dtype, dx.ptr, {w.ptr, scale.ptr, per_channel}, y.ptr, rows, s.in, s.out,
              {codes.ptr, row_scales.ptr, widened.ptr, product.ptr}, nullptr));
          L2KV_CUDA_CHECK(cudaDeviceSynchronize());
          const auto got = y.read();
          const std::string what = std::string(dtype_name(dtype)) + " in=" + std::to_string(s.in) +
                                   " out=" + std::to_string(s.out) +
                                   " rows=" + std::to_string(rows) +
                                   (per_channel ? " per channel" : " per tensor");
          const bool fp8 = gemm.ran_fp8_product(dtype, rows, s.in, s.out) && per_channel;
          if (per_channel) {  // every shape here is a multiple of 16
            EXPECT_TRUE(fp8) << what << ": widened, not W8A8";
          }
          std::printf("[w8a8] %s: %s\n", what.c_str(), fp8 ? "fp8 product" : "widened");
          const double error = product_error(dtype, p, x, rows, got, fp8);
          const bool bf16 = dtype == DType::kBFloat16;
          worst[bf16 ? 0 : 1] = std::max(worst[bf16 ? 0 : 1], error);
          EXPECT_LT(error, bf16 ? 4e-3 : 1e-3) << what;
          if (fp8) {
            EXPECT_GT(product_error(dtype, p, x, rows, got, true, 1.01f), 5e-3)
                << what << ": 1 % off went unnoticed";
          }
        }
  std::printf("[w8a8] largest row error: bf16 %.2e, fp16 %.2e\n", worst[0], worst[1]);
  // An odd shape widens its weights: the 16-bit x, unquantized.
  const Problem p = make_problem(48, 33, true, rng);
  const auto x = random_x(DType::kBFloat16, 40, 48, rng);
  Device<uint8_t> w(p.w);
  Device<float> scale(p.scale);
  Device<uint16_t> dx(x), widened(std::vector<uint16_t>(48 * 33));
  Device<uint16_t> y(std::vector<uint16_t>(40 * 33, 0xffff));
  Device<uint8_t> codes(std::vector<uint8_t>(40 * 48));
  Device<float> row_scales(std::vector<float>(40));
  EXPECT_FALSE(gemm.linear_fp8(DType::kBFloat16, dx.ptr, {w.ptr, scale.ptr, true}, y.ptr, 40, 48,
                               33, {codes.ptr, row_scales.ptr, widened.ptr}, nullptr));
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_FALSE(gemm.ran_fp8_product(DType::kBFloat16, 40, 48, 33));
  EXPECT_LT(product_error(DType::kBFloat16, p, x, 40, y.read(), false), 4e-3) << "widened 48 -> 33";
}

TEST(GemvFp8, UnsupportedProblemsAreErrors) {
  // Checked before any launch: no GPU needed.
  alignas(16) static uint8_t w[64];
  alignas(16) static uint16_t x[64];
  static float scale = 1.f;
  const Fp8Weights weights{w, &scale, false};
  EXPECT_FALSE(gemv_fp8_supports(1, 24, 1, x, weights));    // in not a multiple of 16
  EXPECT_FALSE(gemv_fp8_supports(129, 16, 1, x, weights));  // too many rows
  EXPECT_FALSE(gemv_fp8_supports(1, 16, 1, x, {w, nullptr, false}));
  EXPECT_FALSE(gemv_fp8_supports(1, 16, 1, x + 1, weights));
  EXPECT_TRUE(gemv_fp8_supports(1, 16, 1, x, weights));
  EXPECT_THROW(gemv_fp8(DType::kBFloat16, x, weights, x, 1, 24, 1, nullptr), Error);
}

}  // namespace
}  // namespace l2kv
