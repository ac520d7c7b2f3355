// The fp8-weight GEMV (gemv_fp8.h) and dequantize_fp8 against a double-precision host
// reference: random E4M3 weights (every finite code but the largest exponents), random 16-bit
// x, per-channel and per-tensor scales, bf16 and fp16, rows 1-128 (one block per 16 features,
// then row groups), model and odd shapes, outputs poisoned with NaN first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"
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
