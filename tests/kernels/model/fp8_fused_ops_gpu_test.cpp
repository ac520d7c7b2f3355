// The fp8 forms of add_rmsnorm and gated_mul (model_ops.h): an fp8 product scaled back as they
// read it, and the next projection's codes written beside their 16-bit output. They replace
// rescale_fp8_product -> op -> quantize_rows_fp8, so they are checked against that chain run on
// the same random inputs (never zeros; products, row and column scales all random), bit for
// bit: residual, 16-bit output, codes and scales, outputs poisoned first; the scales written in
// place of the product's row scales, as the model runs them. The chain's own kernels are
// checked against host references in model_ops_gpu_test.cpp and gemv_fp8_gpu_test.cpp. Then
// Gemm::linear_fp8's two switches: codes the op before wrote are used as they are, and a
// deferred product scaled back gives what the rescale kernel writes. rope_and_cache reading the
// QKV product likewise, into poisoned pools (bf16 and fp8) through shuffled slots with pads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/model/fp8_activations.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {
namespace {

constexpr uint16_t kPoison16 = 0xffff;  // NaN in bf16 and fp16
constexpr uint8_t kPoison8 = 0x7f;      // NaN in E4M3

// A device buffer holding a copy of `host`, freed on scope exit.
template <typename T>
struct Buffer {
  explicit Buffer(const std::vector<T>& host) : ptr(testing::upload(host)), n(host.size()) {}
  Buffer(size_t count, T fill) : Buffer(std::vector<T>(count, fill)) {}
  ~Buffer() { cudaFree(ptr); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  std::vector<T> read() const {
    std::vector<T> host(n);
    L2KV_CUDA_CHECK(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  T* ptr;
  size_t n;
};

std::vector<float> uniform(size_t n, float lo, float hi, std::mt19937_64& rng) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// A random fp8 product: float32 sums of E4M3 products (magnitudes up to a few hundred), row
// scales of quantized activations, per-channel weight scales.
struct Product {
  std::vector<float> sums, row_scales, col_scales;
};
Product random_product(int64_t rows, int64_t width, std::mt19937_64& rng) {
  Product p;
  p.sums = uniform(static_cast<size_t>(rows * width), -300.f, 300.f, rng);
  p.row_scales = uniform(static_cast<size_t>(rows), 1e-3f, 1e-2f, rng);
  p.col_scales = uniform(static_cast<size_t>(width), 2e-3f, 2e-2f, rng);
  return p;
}

std::vector<uint16_t> random16(DType t, size_t n, std::mt19937_64& rng) {
  std::vector<uint16_t> v(n);
  for (uint16_t& x : v) {
    const float f = std::uniform_real_distribution<float>(0.05f, 1.5f)(rng);
    x = float_to_dtype_bits(t, rng() % 2 ? f : -f);
  }
  return v;
}

std::string label(DType t, int64_t rows, int64_t width) {
  return std::string(dtype_name(t)) + " rows=" + std::to_string(rows) +
         " width=" + std::to_string(width);
}

class Fp8FusedOps : public ::testing::TestWithParam<DType> {};

TEST_P(Fp8FusedOps, AddRmsNormScalesBackAndQuantizesAsTheChainDoes) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(4242);
  // 1032: 129 vectors, split unevenly over a cluster's blocks; 140 rows: one block per row.
  for (int32_t hidden : {8, 264, 1032, 4096, 5120})
    for (int32_t rows : {1, 3, 64, 140})
      for (bool product_in : {true, false})
        for (bool codes_out : {true, false}) {
          if (!product_in && !codes_out) continue;  // the plain op: model_ops_gpu_test.cpp
          const std::string what = label(t, rows, hidden) + (product_in ? " product in" : "") +
                                   (codes_out ? " codes out" : "");
          const size_t n = static_cast<size_t>(rows) * hidden;
          const Product p = random_product(rows, hidden, rng);
          const std::vector<float> residual = uniform(n, -2.f, 2.f, rng);
          const std::vector<uint16_t> add = random16(t, n, rng), weight = random16(t, hidden, rng);
          Buffer<float> sums(p.sums), col_scales(p.col_scales);
          Buffer<uint16_t> dweight(weight), dadd(add);
          // The chain: rescale, add_rmsnorm, quantize.
          Buffer<float> want_residual(residual), want_scales(p.row_scales);
          Buffer<uint16_t> rescaled(n, kPoison16), want_out(n, kPoison16);
          Buffer<uint8_t> want_codes(n, kPoison8);
          if (product_in)
            rescale_fp8_product(t, sums.ptr, want_scales.ptr, col_scales.ptr, rows, hidden,
                                rescaled.ptr, nullptr);
          ops::add_rmsnorm(t, want_residual.ptr, product_in ? rescaled.ptr : dadd.ptr, dweight.ptr,
                           1e-5f, rows, hidden, want_out.ptr, nullptr);
          if (codes_out)
            quantize_rows_fp8(t, want_out.ptr, rows, hidden, want_codes.ptr, want_scales.ptr,
                              nullptr);
          // Fused, the codes' scales written over the product's row scales.
          Buffer<float> got_residual(residual), got_scales(p.row_scales);
          Buffer<uint16_t> got_out(n, kPoison16);
          Buffer<uint8_t> got_codes(n, kPoison8);
          const Fp8Product product_arg{sums.ptr, got_scales.ptr, col_scales.ptr};
          const Fp8Rows codes_arg{got_codes.ptr, got_scales.ptr};
          ops::add_rmsnorm(t, got_residual.ptr, product_in ? nullptr : dadd.ptr, dweight.ptr, 1e-5f,
                           rows, hidden, got_out.ptr, nullptr, false, {}, nullptr,
                           product_in ? product_arg : Fp8Product{},
                           codes_out ? codes_arg : Fp8Rows{});
          L2KV_CUDA_CHECK(cudaDeviceSynchronize());
          EXPECT_EQ(got_residual.read(), want_residual.read()) << what;
          EXPECT_EQ(got_out.read(), want_out.read()) << what;
          EXPECT_EQ(got_scales.read(), want_scales.read()) << what;
          if (codes_out) {
            EXPECT_EQ(got_codes.read(), want_codes.read()) << what;
          } else {
            EXPECT_EQ(got_codes.read(), std::vector<uint8_t>(n, kPoison8))
                << what << ": wrote codes";
          }
        }
}

// Gemma 3's addend, normalized by its own weight before it is added (add_weight), with codes out:
// the kernel's two block reductions one after the other (block_reduce.cuh).
TEST_P(Fp8FusedOps, AddRmsNormOfANormalizedAddendQuantizesAsTheChainDoes) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(4343);
  for (int32_t hidden : {264, 1032, 5376})
    for (int32_t rows : {3, 64}) {
      const std::string what = label(t, rows, hidden);
      const size_t n = static_cast<size_t>(rows) * hidden;
      const std::vector<float> residual = uniform(n, -2.f, 2.f, rng);
      const std::vector<uint16_t> add = random16(t, n, rng), weight = random16(t, hidden, rng),
                                  add_weight = random16(t, hidden, rng);
      Buffer<uint16_t> dadd(add), dweight(weight), dadd_weight(add_weight);
      Buffer<float> want_residual(residual), got_residual(residual);
      Buffer<uint16_t> want_out(n, kPoison16), got_out(n, kPoison16);
      Buffer<uint8_t> want_codes(n, kPoison8), got_codes(n, kPoison8);
      Buffer<float> want_scales(static_cast<size_t>(rows), -1.f);
      Buffer<float> got_scales(static_cast<size_t>(rows), -1.f);
      ops::add_rmsnorm(t, want_residual.ptr, dadd.ptr, dweight.ptr, 1e-6f, rows, hidden,
                       want_out.ptr, nullptr, false, {}, dadd_weight.ptr);
      quantize_rows_fp8(t, want_out.ptr, rows, hidden, want_codes.ptr, want_scales.ptr, nullptr);
      ops::add_rmsnorm(t, got_residual.ptr, dadd.ptr, dweight.ptr, 1e-6f, rows, hidden, got_out.ptr,
                       nullptr, false, {}, dadd_weight.ptr, {},
                       Fp8Rows{got_codes.ptr, got_scales.ptr});
      L2KV_CUDA_CHECK(cudaDeviceSynchronize());
      EXPECT_EQ(got_residual.read(), want_residual.read()) << what;
      EXPECT_EQ(got_out.read(), want_out.read()) << what;
      EXPECT_EQ(got_codes.read(), want_codes.read()) << what;
      EXPECT_EQ(got_scales.read(), want_scales.read()) << what;
    }
}

TEST_P(Fp8FusedOps, GatedMulScalesBackAndQuantizesAsTheChainDoes) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(777);
  // 300 rows with a 16-bit gate_up: the op, then quantize_rows_fp8 (prompt sizes).
  for (int32_t inter : {8, 264, 1032, 14336})
    for (int32_t rows : {1, 5, 64, 140, 300})
      for (bool interleaved : {true, false})
        for (ops::GateActivation act : {ops::GateActivation::kSilu, ops::GateActivation::kGeluTanh})
          for (bool product_in : {true, false})
            for (bool codes_out : {true, false}) {
              if (!product_in && !codes_out) continue;
              if (inter == 14336 && (act != ops::GateActivation::kSilu || rows == 5)) continue;
              if (rows == 300 && inter == 8) continue;
              const std::string what = label(t, rows, inter) + (interleaved ? " interleaved" : "") +
                                       (act == ops::GateActivation::kSilu ? " silu" : " gelu") +
                                       (product_in ? " product in" : "") +
                                       (codes_out ? " codes out" : "");
              const size_t n = static_cast<size_t>(rows) * inter;
              // gate x up products of a few units: sums / 300 x scales ~ 1e-3..2e-2 x 300.
              const Product p = random_product(rows, 2 * inter, rng);
              const std::vector<uint16_t> gate_up = random16(t, 2 * n, rng);
              Buffer<float> sums(p.sums), col_scales(p.col_scales);
              Buffer<uint16_t> dgate_up(gate_up);
              Buffer<float> want_scales(p.row_scales);
              Buffer<uint16_t> rescaled(2 * n, kPoison16), want_out(n, kPoison16);
              Buffer<uint8_t> want_codes(n, kPoison8);
              if (product_in)
                rescale_fp8_product(t, sums.ptr, want_scales.ptr, col_scales.ptr, rows, 2 * inter,
                                    rescaled.ptr, nullptr);
              ops::gated_mul(t, product_in ? rescaled.ptr : dgate_up.ptr, rows, inter, want_out.ptr,
                             nullptr, false, interleaved, act);
              if (codes_out)
                quantize_rows_fp8(t, want_out.ptr, rows, inter, want_codes.ptr, want_scales.ptr,
                                  nullptr);
              Buffer<float> got_scales(p.row_scales);
              Buffer<uint16_t> got_out(n, kPoison16);
              Buffer<uint8_t> got_codes(n, kPoison8);
              const Fp8Product product_arg{sums.ptr, got_scales.ptr, col_scales.ptr};
              const Fp8Rows codes_arg{got_codes.ptr, got_scales.ptr};
              ops::gated_mul(t, product_in ? nullptr : dgate_up.ptr, rows, inter, got_out.ptr,
                             nullptr, false, interleaved, act,
                             product_in ? product_arg : Fp8Product{},
                             codes_out ? codes_arg : Fp8Rows{});
              L2KV_CUDA_CHECK(cudaDeviceSynchronize());
              EXPECT_EQ(got_out.read(), want_out.read()) << what;
              EXPECT_EQ(got_scales.read(), want_scales.read()) << what;
              if (codes_out) {
                EXPECT_EQ(got_codes.read(), want_codes.read()) << what;
              }
            }
}

TEST_P(Fp8FusedOps, RopeAndCacheScalesBackAsTheChainDoes) {
  L2KV_SKIP_WITHOUT_GPU();
  const DType t = GetParam();
  std::mt19937_64 rng(31337);
  struct Case {
    int32_t head_dim, q_heads, kv_heads, rows;
    bool bias, qk_norm, fp8_cache, pair_rows;
  };
  const Case cases[] = {{128, 32, 8, 37, true, false, false, true},
                        {128, 32, 8, 64, false, false, true, true},
                        {64, 8, 2, 9, true, true, false, false},
                        {128, 16, 8, 70, false, true, true, true}};
  for (const Case& c : cases) {
    const int32_t d = c.head_dim, block_size = 16;
    const int32_t q_dim = c.q_heads * d, width = q_dim + 2 * c.kv_heads * d;
    const int32_t num_blocks = (c.rows + block_size - 1) / block_size + 3;
    const std::string what = label(t, c.rows, width) + " head_dim=" + std::to_string(d) +
                             (c.bias ? " bias" : "") + (c.qk_norm ? " qk_norm" : "") +
                             (c.fp8_cache ? " fp8 cache" : "");
    // Products of a few units once scaled: sums up to 300 x 1e-2 x 2e-2.
    Product p = random_product(c.rows, width, rng);
    for (float& v : p.col_scales) v *= 20.f;
    const std::vector<uint16_t> bias = random16(t, static_cast<size_t>(width), rng);
    const std::vector<uint16_t> q_norm = random16(t, static_cast<size_t>(d), rng);
    const std::vector<uint16_t> k_norm = random16(t, static_cast<size_t>(d), rng);
    std::vector<int32_t> positions(static_cast<size_t>(c.rows)), slots(positions.size());
    std::vector<int32_t> order(static_cast<size_t>(num_blocks * block_size));
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
    std::shuffle(order.begin(), order.end(), rng);
    for (int32_t r = 0; r < c.rows; ++r) {
      positions[static_cast<size_t>(r)] = static_cast<int32_t>(rng() % 100000);
      slots[static_cast<size_t>(r)] = r % 7 == 4 ? -1 : order[static_cast<size_t>(r)];  // pads
    }
    std::vector<float> inv_freq(static_cast<size_t>(d / 2));
    for (int32_t i = 0; i < d / 2; ++i)
      inv_freq[static_cast<size_t>(i)] = static_cast<float>(std::pow(500000.0, -2.0 * i / d));
    PagedKvCache kv;
    kv.num_blocks = num_blocks;
    kv.block_size = block_size;
    kv.num_kv_heads = c.kv_heads;
    kv.head_dim = d;
    kv.layout = KvLayout::kHND;
    kv.dtype = t;
    kv.storage = c.fp8_cache ? KvStorage::kFp8E4M3 : KvStorage::kModelDtype;
    kv.k_scale = c.fp8_cache ? 0.013f : 1.f;
    kv.v_scale = c.fp8_cache ? 0.0071f : 1.f;
    const size_t pool_bytes =
        static_cast<size_t>(num_blocks) * kv.block_stride() * (c.fp8_cache ? 1 : 2);
    Buffer<float> sums(p.sums), row_scales(p.row_scales), col_scales(p.col_scales);
    Buffer<uint16_t> dbias(bias), dq_norm(q_norm), dk_norm(k_norm);
    Buffer<int32_t> dpositions(positions), dslots(slots);
    Buffer<float> dinv_freq(inv_freq);
    const ops::QkNorm qk_norm =
        c.qk_norm ? ops::QkNorm{dq_norm.ptr, dk_norm.ptr, 1e-6f} : ops::QkNorm{};
    const size_t q_elems = static_cast<size_t>(c.rows) * q_dim;
    // The chain and the fused form, each into its own poisoned pools and q.
    Buffer<uint16_t> rescaled(static_cast<size_t>(c.rows) * width, kPoison16);
    Buffer<uint16_t> want_q(q_elems, kPoison16), got_q(q_elems, kPoison16);
    Buffer<uint8_t> want_k(pool_bytes, 0xff), want_v(pool_bytes, 0xff);
    Buffer<uint8_t> got_k(pool_bytes, 0xff), got_v(pool_bytes, 0xff);
    rescale_fp8_product(t, sums.ptr, row_scales.ptr, col_scales.ptr, c.rows, width, rescaled.ptr,
                        nullptr);
    kv.k_pool = want_k.ptr;
    kv.v_pool = want_v.ptr;
    ops::rope_and_cache(rescaled.ptr, c.bias ? dbias.ptr : nullptr, dpositions.ptr, dslots.ptr,
                        dinv_freq.ptr, c.rows, c.q_heads, kv, want_q.ptr, nullptr, false, qk_norm,
                        c.pair_rows);
    kv.k_pool = got_k.ptr;
    kv.v_pool = got_v.ptr;
    ops::rope_and_cache(nullptr, c.bias ? dbias.ptr : nullptr, dpositions.ptr, dslots.ptr,
                        dinv_freq.ptr, c.rows, c.q_heads, kv, got_q.ptr, nullptr, false, qk_norm,
                        c.pair_rows, Fp8Product{sums.ptr, row_scales.ptr, col_scales.ptr});
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<uint16_t> q = want_q.read();
    EXPECT_EQ(got_q.read(), q) << what;
    EXPECT_EQ(got_k.read(), want_k.read()) << what;
    EXPECT_EQ(got_v.read(), want_v.read()) << what;
    EXPECT_EQ(std::count(q.begin(), q.end(), kPoison16), 0) << what << ": q left unwritten";
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Fp8FusedOps, ::testing::Values(DType::kBFloat16, DType::kFloat16),
                         [](const auto& param_info) {
                           return std::string(dtype_name(param_info.param));
                         });

TEST(Fp8FusedOpsErrors, ShapesTheFp8FormsCannotTakeAreErrors) {
  // Checked before any launch: no GPU needed.
  static float f[64];
  static uint8_t codes[64];
  const Fp8Product product{f, f, f};
  const Fp8Rows out{codes, f};
  EXPECT_THROW(ops::add_rmsnorm(DType::kBFloat16, f, nullptr, f, 1e-5f, 1, 12, f, nullptr, false,
                                {}, nullptr, product),
               Error);  // hidden not a multiple of 8
  EXPECT_THROW(ops::add_rmsnorm(DType::kBFloat16, f, f, f, 1e-5f, 1, 16, f, nullptr, false, {},
                                nullptr, product),
               Error);  // two addends
  EXPECT_THROW(ops::add_rmsnorm(DType::kBFloat16, f, nullptr, f, 1e-5f, 1, 16, f, nullptr, false,
                                {}, nullptr, {}, Fp8Rows{codes, nullptr}),
               Error);  // codes without scales
  EXPECT_THROW(ops::gated_mul(DType::kBFloat16, nullptr, 1, 12, f, nullptr, false, false,
                              ops::GateActivation::kSilu, {}, out),
               Error);  // inter not a multiple of 8
}

// Gemm::linear_fp8 at 64 rows (the product scaled after cuBLASLt's): with codes_ready it
// multiplies the codes it is given and never reads x (zeros here); with defer_rescale it
// leaves y alone and the product, scaled back by rescale_fp8_product, is y bit for bit. At 160
// rows (cuBLASLt's outer-vector scales, reading the row scales it is given) codes_ready holds
// the same way and there is no rescale to defer: y is written.
void check_linear_fp8_switches(int64_t rows) {
  SCOPED_TRACE("rows=" + std::to_string(rows));
  const DType t = DType::kBFloat16;
  const int64_t in = 4096, out = 1024;
  const bool scaled_after = rows <= Gemm::kFp8ScaledAfterMaxRows;
  std::mt19937_64 rng(99 + static_cast<uint64_t>(rows));
  std::vector<uint8_t> w(static_cast<size_t>(in * out));
  for (uint8_t& c : w) c = static_cast<uint8_t>(rng() % 0x78 | (rng() % 2) << 7);  // finite
  const std::vector<float> w_scales = uniform(static_cast<size_t>(out), 2e-3f, 2e-2f, rng);
  const std::vector<uint16_t> x = random16(t, static_cast<size_t>(rows * in), rng);
  Buffer<uint8_t> dw(w);
  Buffer<float> dw_scales(w_scales);
  const Fp8Weights weights{dw.ptr, dw_scales.ptr, true};
  Buffer<uint16_t> dx(x), zeros(static_cast<size_t>(rows * in), 0);
  Buffer<uint16_t> want(static_cast<size_t>(rows * out), kPoison16);
  Buffer<uint8_t> codes(static_cast<size_t>(rows * in), kPoison8);
  Buffer<float> row_scales(static_cast<size_t>(rows), -1.f);
  Buffer<float> product(static_cast<size_t>(rows * out), NAN);
  Gemm gemm;
  Gemm::Fp8Scratch scratch{codes.ptr, row_scales.ptr, nullptr, product.ptr};
  EXPECT_FALSE(gemm.linear_fp8(t, dx.ptr, weights, want.ptr, rows, in, out, scratch, nullptr));
  ASSERT_TRUE(gemm.ran_fp8_product(t, rows, in, out));
  // The codes of x are in `codes` now; x itself is replaced by zeros.
  scratch.codes_ready = true;
  Buffer<uint16_t> from_codes(static_cast<size_t>(rows * out), kPoison16);
  EXPECT_FALSE(
      gemm.linear_fp8(t, zeros.ptr, weights, from_codes.ptr, rows, in, out, scratch, nullptr));
  scratch.defer_rescale = true;
  Buffer<uint16_t> deferred(static_cast<size_t>(rows * out), kPoison16);
  L2KV_CUDA_CHECK(cudaMemset(product.ptr, 0xff, product.n * sizeof(float)));
  EXPECT_EQ(gemm.linear_fp8(t, zeros.ptr, weights, deferred.ptr, rows, in, out, scratch, nullptr),
            scaled_after);
  Buffer<uint16_t> scaled_back(static_cast<size_t>(rows * out), kPoison16);
  if (scaled_after)
    rescale_fp8_product(t, product.ptr, row_scales.ptr, dw_scales.ptr, rows, out, scaled_back.ptr,
                        nullptr);
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<uint16_t> y = want.read();
  EXPECT_EQ(from_codes.read(), y);
  if (scaled_after) {
    EXPECT_EQ(scaled_back.read(), y);
    EXPECT_EQ(deferred.read(), std::vector<uint16_t>(y.size(), kPoison16)) << "y written";
  } else {
    EXPECT_EQ(deferred.read(), y) << "nothing to defer: y is written";
  }
  // y is the product of x, not of zeros.
  int64_t nonzero = 0;
  for (uint16_t v : y) nonzero += dtype_bits_to_float(t, v) != 0.f;
  EXPECT_GT(nonzero, static_cast<int64_t>(y.size()) * 9 / 10);
}

TEST(Fp8GemmSwitches, LinearFp8TakesReadyCodesAndDefersItsScales) {
  L2KV_SKIP_WITHOUT_GPU();
  for (int64_t rows : {64, 160}) check_linear_fp8_switches(rows);
}

}  // namespace
}  // namespace l2kv
