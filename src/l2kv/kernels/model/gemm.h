// Dense projections: y[rows, out] = x[rows, in] * W[out, in]^T with 16-bit operands (bf16 or
// fp16) and fp32 accumulation on tensor cores. Decode-sized row counts go to the mma.sync
// weight-streaming GEMV (gemv.h), the rest to cuBLASLt, whose descriptors and chosen algorithm
// are cached per shape, so repeated calls do no host-side planning. A TMA ring + wgmma kernel
// was tried between the two and lost to the faster of them on every projection shape measured
// (bench/NOTES.md, "Decode projections v3" and "The weight-streaming kernel, second form").
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <span>
#include <tuple>
#include <vector>

#include "l2kv/core/dtype.h"
#include "l2kv/kernels/model/gemv.h"
#include "l2kv/kernels/model/gemv_fp8.h"

namespace l2kv {

class Gemm {
 public:
  Gemm();
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // y in `dtype`, like x and w.
  void linear(DType dtype, const void* x, const void* w, void* y, int64_t rows, int64_t in,
              int64_t out, cudaStream_t stream);
  // linear() on cuBLASLt with its heuristic's first choice, never timed: for shapes that change
  // every step (a mixture of experts' rows per expert), where timing each new one would cost
  // more than it wins.
  void linear_untimed(DType dtype, const void* x, const void* w, void* y, int64_t rows, int64_t in,
                      int64_t out, cudaStream_t stream);
  // y in float32 (the LM head's logits).
  void linear_f32_out(DType dtype, const void* x, const void* w, float* y, int64_t rows, int64_t in,
                      int64_t out, cudaStream_t stream);

  // Buffers of linear_fp8 for more rows than the fp8 GEMV takes: `codes` [rows, in] and
  // `row_scales` [rows] hold x quantized per token (fp8_activations.h) for cuBLASLt's fp8
  // product; `product` [rows, out] float32 that product before its scales, for up to
  // kFp8ScaledAfterMaxRows rows; `widened` (out x in 16-bit elements) the weights widened where
  // cuBLASLt has no fp8 algorithm for the shape. Any may be null: its path is not taken.
  // `codes_ready`: the op that wrote x also wrote its codes and row scales there
  // (add_rmsnorm's and gated_mul's fp8 outputs), so linear_fp8 does not quantize x again.
  // `defer_rescale`: where the product's scales would be applied by a kernel of their own,
  // linear_fp8 leaves `product` unscaled and y unwritten for the next op to scale back
  // (model_ops.h's Fp8Product inputs).
  struct Fp8Scratch {
    uint8_t* codes = nullptr;
    float* row_scales = nullptr;
    void* widened = nullptr;
    float* product = nullptr;
    bool codes_ready = false;
    bool defer_rescale = false;
  };
  // Up to this many rows the fp8 product runs without cuBLASLt's outer-vector scaling, whose
  // kernels (128 x 128 tiles, no split-K) streamed QKV, O and down at 0.29-0.42 of the read
  // ceiling at 64 rows on an H200: the codes' product in float32 from its split-K kernels, then
  // both scales in a kernel of their own. There 5.17 / 6.50 / 8.99 ms a llama3-8b-fp8 step at
  // 33 / 64 / 128 rows against 6.18 / 7.17 / 8.92 (bench/NOTES.md).
  static constexpr int64_t kFp8ScaledAfterMaxRows = 128;
  // y = x W^T with fp8 weights: up to kFp8GemvMaxRows rows on the fp8 GEMV (gemv_fp8.h, with
  // programmatic dependent launch as configured; x stays 16-bit); more rows quantize x per token
  // and multiply in fp8 on cuBLASLt (W8A8, as compressed-tensors' and fbgemm's dynamic fp8
  // checkpoints specify: both scales applied to the fp32 sums; per-channel weight scales only),
  // or, where that is off, cuBLASLt has no fp8 algorithm for the shape or no codes buffer is
  // given, widen W into scratch.widened and run linear() on it. Returns true when it deferred
  // the rescale: y unwritten, scratch.product and scratch.row_scales holding the product.
  static constexpr int64_t kFp8GemvMaxRows = 32;
  [[nodiscard]] bool linear_fp8(DType dtype, const void* x, const Fp8Weights& w, void* y,
                                int64_t rows, int64_t in, int64_t out, const Fp8Scratch& scratch,
                                cudaStream_t stream);
  // Whether linear_fp8 may quantize x for this shape (the op before may then write the codes):
  // W8A8 on and more rows than the fp8 GEMV takes. It does not ask whether cuBLASLt has an fp8
  // plan for the shape; where it has none, the codes written go unread and x is used.
  bool fp8_quantizes_input(int64_t rows, int64_t in, int64_t out) const {
    return rows > kFp8GemvMaxRows && fp8_product_shape(in, out);
  }
  // Whether linear_fp8 quantizes x and multiplies in fp8 where it can (default) or always widens
  // the weights (16-bit activations: more accurate, slower).
  void set_fp8_activations(bool quantized) { fp8_activations_ = quantized; }
  bool fp8_activations() const { return fp8_activations_; }
  // Whether linear_fp8 has multiplied this shape in fp8 (its fp8 plan exists).
  bool ran_fp8_product(DType dtype, int64_t rows, int64_t in, int64_t out) const;

  // Whether linear() runs this projection on the GEMV (rather than cuBLASLt or the opt-in
  // weight-streaming kernel).
  bool routes_to_gemv(int64_t rows, int64_t in, int64_t out, const void* x, const void* w) const;

  // A projection with the decode layer's fusions (gemv.h): true when `rows` is within
  // gemv_max_rows() and the GEMV supports the problem with `fusion` (x may be null when the
  // fusion's norm prologue computes it).
  bool fused_supported(int64_t rows, int64_t in, int64_t out, const void* x, const void* w,
                       const GemvFusion& fusion) const;
  // Runs it on the GEMV (with programmatic dependent launch as configured); throws
  // l2kv::Error when fused_supported() is false.
  void linear_fused(DType dtype, const void* x, const void* w, void* y, int64_t rows, int64_t in,
                    int64_t out, const GemvFusion& fusion, cudaStream_t stream);

  // Calls with rows <= this go to the GEMV kernel when gemv_supports() the problem, the rest
  // to cuBLASLt. 0 sends everything to cuBLASLt (benchmarks compare the two); at most
  // kGemvMaxRows. Throws l2kv::Error outside [0, kGemvMaxRows].
  static constexpr int kDefaultGemvMaxRows = 16;
  void set_gemv_max_rows(int rows);
  int gemv_max_rows() const { return gemv_max_rows_; }
  // Matrices with more output features stay on cuBLASLt at any row count (measured).
  static constexpr int64_t kGemvMaxOut = 8192;
  // cuBLASLt shapes of up to this many rows (decode steps) time cuBLASLt's candidate algorithms
  // on their first call and keep the fastest; larger ones (prompts) take its first choice. 0
  // never times. Graph capture never times: call each shape once before capturing it.
  static constexpr int64_t kDefaultTuneMaxRows = 256;
  void set_tune_max_rows(int64_t rows) { tune_max_rows_ = rows; }
  // Shapes of more rows than that and up to this many (prompt chunks, mixed steps) are timed
  // once per bucket of row counts (prompt_tune_bucket()) instead of once per shape, since a
  // step's row count changes with every prompt: the first shape of a bucket times cuBLASLt's
  // candidates (as kHeuristic or kWide say) and the bucket's later shapes reuse its choice where
  // cuBLASLt accepts it for them. Off by default: on an H100 the timed choice ran Llama-3-8B's
  // prompt projections no faster than the heuristic's (bench/NOTES.md, "Prompt GEMMs timed per
  // bucket"), though it ran a bf16 8192^3 product 1.5-3 % faster, which is why the prefill
  // bench's bar times it.
  static constexpr int64_t kDefaultPromptTuneMaxRows = 0;
  void set_prompt_tune_max_rows(int64_t rows) { prompt_tune_max_rows_ = rows; }
  // The bucket of a prompt-sized row count: the least 2^k or 3 x 2^(k-1) at or above it.
  static int64_t prompt_tune_bucket(int64_t rows);
  // The timing flushes the L2 with a buffer of twice its size, allocated for each timed shape
  // by default. Reserved here once instead (kept until the Gemm is destroyed), no timing
  // allocates or frees device memory: a tensor-parallel rank must not, while other ranks'
  // collectives may be spinning on the same GPU (cudaFree waits for the whole device).
  void reserve_tuning_flush();
  // Which cuBLASLt algorithms a timed shape tries: kHeuristic, the heuristic's first
  // kTuneCandidates; kWide, those plus each algorithm's own suggestions (cuBLASLt's search
  // limited by algorithm id) with other split-K and cluster settings, some hundreds per shape
  // (tens of milliseconds each on an H200; bench/NOTES.md has what it buys).
  enum class Tuning { kHeuristic, kWide };
  void set_tuning(Tuning tuning) { tuning_ = tuning; }

  // GEMV and weight-streaming launches use programmatic dependent launch (see gemv());
  // cuBLASLt launches do not.
  void set_programmatic_launch(bool pdl) { pdl_ = pdl; }

 private:
  // W8A8 on and a shape of 16-byte rows (quantize_rows_fp8's and cuBLASLt's fp8 layout).
  bool fp8_product_shape(int64_t in, int64_t out) const {
    return fp8_activations_ && in % 16 == 0 && out % 16 == 0;
  }
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // What a plan multiplies: 16-bit operands with a result in their type or in float32, or fp8
  // E4M3 operands (W8A8) with per-token x and per-channel weight scales applied by cuBLASLt, or
  // after it (float32 out).
  enum class Operands { k16Bit, k16BitF32Out, kFp8, kFp8ScaledAfter };
  // The plan of the codes' product in float32, unscaled; null when cuBLASLt has none.
  Plan* fp8_scaled_after_plan_for(int64_t rows, int64_t in, int64_t out, const uint8_t* codes,
                                  const uint8_t* w, float* product, cudaStream_t stream);
  using Key = std::tuple<int, int, int64_t, int64_t, int64_t>;  // dtype, operands, rows, in, out
  // Caches an fp8 plan under `key`, empty unless `chosen` (the shape then takes another path
  // from now on); returns it, or null when empty.
  Plan* keep_fp8_plan(const Key& key, Plan& p, bool chosen);
  // The cached plan of a shape; a new one is chosen on the given operands (see fastest()).
  const Plan& plan_for(DType dtype, bool f32_out, int64_t rows, int64_t in, int64_t out,
                       const void* x, const void* w, void* y, cudaStream_t stream,
                       bool timed = true);
  // The fp8 plan of a shape, its scale pointers set to these; null when cuBLASLt has no fp8
  // algorithm for it (remembered).
  Plan* fp8_plan_for(DType dtype, const Fp8Weights& w, const float* row_scales, int64_t rows,
                     int64_t in, int64_t out, const uint8_t* codes, void* y, cudaStream_t stream);
  // Picks p.algo among cuBLASLt's heuristic choices for p's descriptors (timed as plan_for
  // says); false, changing nothing, when there is none.
  bool choose_algorithm(Plan& p, cudaDataType_t operands, cudaDataType_t output, int64_t rows,
                        int64_t in, int64_t out, const void* x, const void* w, void* y,
                        cudaStream_t stream, bool timed);
  static void destroy(Plan& p);
  // Descriptors of y^T = op(W) x^T in these types, no algorithm chosen yet.
  static Plan make_plan(cudaDataType_t operands, cudaDataType_t output, int64_t rows, int64_t in,
                        int64_t out);
  cublasLtMatmulAlgo_t fastest(const Plan& p, std::span<const cublasLtMatmulAlgo_t> candidates,
                               const void* x, const void* w, void* y, cudaStream_t stream);
  // Appends Tuning::kWide's extra candidates for the plan's shape to `candidates` (those not
  // there yet): each algorithm id's suggestions and their split-K / cluster variants that
  // cublasLtMatmulAlgoCheck accepts.
  void add_wide_candidates(const Plan& p, cudaDataType_t operands, cudaDataType_t output,
                           std::vector<cublasLtMatmulAlgo_t>& candidates);
  // y = x W^T with the plan's algorithm on `stream`.
  void matmul(const Plan& p, const void* x, const void* w, void* y, cudaStream_t stream);
  static constexpr int kTuneCandidates = 32;
  static constexpr int kTuneReps = 3;
  // With more than kTuneCandidates candidates, each is timed once and this many again.
  static constexpr int kTuneFinalists = 8;
  void run(DType dtype, bool f32_out, const void* x, const void* w, void* y, int64_t rows,
           int64_t in, int64_t out, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  void* tuning_flush_ = nullptr;  // reserve_tuning_flush()
  size_t tuning_flush_bytes_ = 0;
  std::map<Key, Plan> plans_;
  // The algorithm timed for each bucket of prompt-sized shapes, keyed by (operand type, output
  // type, prompt_tune_bucket(rows), in, out).
  std::map<Key, cublasLtMatmulAlgo_t> bucket_algos_;
  int gemv_max_rows_ = kDefaultGemvMaxRows;
  int64_t tune_max_rows_ = kDefaultTuneMaxRows;
  int64_t prompt_tune_max_rows_ = kDefaultPromptTuneMaxRows;
  bool pdl_ = false;
  bool fp8_activations_ = true;
  Tuning tuning_ = Tuning::kHeuristic;
};

}  // namespace l2kv
