#include "l2kv/kernels/model/gemm.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/model/fp8_activations.h"
#include "l2kv/kernels/model/gemv.h"

namespace l2kv {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(std::string("cuBLASLt ") + what + " failed with status " + std::to_string(s));
}

cudaDataType_t cuda_type(DType t) {
  return t == DType::kFloat16 ? CUDA_R_16F : CUDA_R_16BF;
}

// Appends `algo` unless `list` holds it already (the same configuration, byte for byte).
void add_unique(std::vector<cublasLtMatmulAlgo_t>& list, const cublasLtMatmulAlgo_t& algo) {
  if (std::none_of(list.begin(), list.end(), [&](const cublasLtMatmulAlgo_t& b) {
        return std::memcmp(algo.data, b.data, sizeof algo.data) == 0;
      }))
    list.push_back(algo);
}

// A heuristic preference of `mode` that allows the whole workspace; the caller destroys it.
cublasLtMatmulPreference_t make_preference(cublasLtMatmulSearch_t mode) {
  cublasLtMatmulPreference_t pref = nullptr;
  check(cublasLtMatmulPreferenceCreate(&pref), "preference");
  const uint32_t search = mode;
  const size_t workspace = kWorkspaceBytes;
  check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_SEARCH_MODE, &search,
                                             sizeof search),
        "preference search mode");
  check(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                             &workspace, sizeof workspace),
        "preference workspace");
  return pref;
}

}  // namespace

Gemm::Gemm() {
  check(cublasLtCreate(&handle_), "create");
  L2KV_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
}

void Gemm::destroy(Plan& p) {
  if (p.a) cublasLtMatrixLayoutDestroy(p.a);
  if (p.b) cublasLtMatrixLayoutDestroy(p.b);
  if (p.c) cublasLtMatrixLayoutDestroy(p.c);
  if (p.op) cublasLtMatmulDescDestroy(p.op);
  p = {};
}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) destroy(p);
  if (workspace_) cudaFree(workspace_);
  if (tuning_flush_) cudaFree(tuning_flush_);
  if (handle_) cublasLtDestroy(handle_);
}

// Row-major y[rows, out] = x W^T is column-major y^T (out x rows) = op(A) B with A = W stored
// column-major as (in x out), op(A) = A^T, and B = x^T stored column-major as (in x rows): both
// operands k-major, the layout fp8 products require too.
Gemm::Plan Gemm::make_plan(cudaDataType_t operands, cudaDataType_t output, int64_t rows, int64_t in,
                           int64_t out) {
  Plan p;
  check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc create");
  const cublasOperation_t transpose = CUBLAS_OP_T;
  check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                       sizeof transpose),
        "set transa");
  check(cublasLtMatrixLayoutCreate(&p.a, operands, in, out, in), "layout A");
  check(cublasLtMatrixLayoutCreate(&p.b, operands, in, rows, in), "layout B");
  check(cublasLtMatrixLayoutCreate(&p.c, output, out, rows, out), "layout C");
  return p;
}

const Gemm::Plan& Gemm::plan_for(DType dtype, bool f32_out, int64_t rows, int64_t in, int64_t out,
                                 const void* x, const void* w, void* y, cudaStream_t stream,
                                 bool timed) {
  const Operands operands = f32_out ? Operands::k16BitF32Out : Operands::k16Bit;
  const Key key{static_cast<int>(dtype), static_cast<int>(operands), rows, in, out};
  if (const auto it = plans_.find(key); it != plans_.end()) return it->second;
  const cudaDataType_t t = cuda_type(dtype);
  Plan p = make_plan(t, f32_out ? CUDA_R_32F : t, rows, in, out);
  if (!choose_algorithm(p, t, f32_out ? CUDA_R_32F : t, rows, in, out, x, w, y, stream, timed)) {
    destroy(p);
    throw Error("cuBLASLt has no algorithm for " + std::to_string(rows) + "x" + std::to_string(in) +
                " * " + std::to_string(in) + "x" + std::to_string(out));
  }
  return plans_.emplace(key, p).first->second;
}

bool Gemm::choose_algorithm(Plan& p, cudaDataType_t operands, cudaDataType_t output, int64_t rows,
                            int64_t in, int64_t out, const void* x, const void* w, void* y,
                            cudaStream_t stream, bool timed) {
  cublasLtMatmulPreference_t pref = make_preference(CUBLASLT_SEARCH_BEST_FIT);
  cublasLtMatmulHeuristicResult_t results[kTuneCandidates] = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
      handle_, p.op, p.a, p.b, p.c, p.c, pref, kTuneCandidates, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  // An fp8 product cuBLASLt does not take (a shape, a scale mode) is refused with one of these.
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE ||
      (status == CUBLAS_STATUS_SUCCESS && found == 0))
    return false;
  check(status, "heuristic");
  p.algo = results[0].algo;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  L2KV_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (!timed || capture != cudaStreamCaptureStatusNone) return true;
  const bool exact = rows <= tune_max_rows_;
  if (!exact && rows > prompt_tune_max_rows_) return true;
  // A prompt-sized shape takes the algorithm timed for its bucket where cuBLASLt accepts it
  // for these descriptors; the first shape of a bucket times it.
  const Key bucket{static_cast<int>(operands), static_cast<int>(output), prompt_tune_bucket(rows),
                   in, out};
  if (!exact) {
    if (const auto it = bucket_algos_.find(bucket); it != bucket_algos_.end()) {
      cublasLtMatmulHeuristicResult_t checked = {};
      if (cublasLtMatmulAlgoCheck(handle_, p.op, p.a, p.b, p.c, p.c, &it->second, &checked) ==
              CUBLAS_STATUS_SUCCESS &&
          checked.workspaceSize <= kWorkspaceBytes)
        p.algo = it->second;
      return true;
    }
  }
  std::vector<cublasLtMatmulAlgo_t> candidates;
  for (int i = 0; i < found; ++i)
    if (results[i].state == CUBLAS_STATUS_SUCCESS) candidates.push_back(results[i].algo);
  if (tuning_ == Tuning::kWide) add_wide_candidates(p, operands, output, candidates);
  if (candidates.size() > 1) p.algo = fastest(p, candidates, x, w, y, stream);
  if (!exact) bucket_algos_.emplace(bucket, p.algo);
  return true;
}

int64_t Gemm::prompt_tune_bucket(int64_t rows) {
  // 2^k or 3 x 2^(k-1): two buckets an octave, so a bucket's shapes differ by at most a third.
  int64_t bucket = 1;
  while (bucket < rows) bucket *= 2;
  return bucket / 4 * 3 >= rows && bucket >= 4 ? bucket / 4 * 3 : bucket;
}

// W8A8: y^T (out x rows) = op(A) B as for 16 bits, A the E4M3 weights and B the E4M3 codes of
// x (both k-major, the layout fp8 products need), each (i, j) of the fp32 product times A's
// scale i (per channel) and B's scale j (per token): cuBLASLt's outer-vector scaling.
Gemm::Plan* Gemm::fp8_plan_for(DType dtype, const Fp8Weights& w, const float* row_scales,
                               int64_t rows, int64_t in, int64_t out, const uint8_t* codes, void* y,
                               cudaStream_t stream) {
  if (!w.per_channel) return nullptr;
  const Key key{static_cast<int>(dtype), static_cast<int>(Operands::kFp8), rows, in, out};
  const auto set_scales = [&](Plan& p) {
    check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &w.scale,
                                         sizeof w.scale),
          "set A scale");
    check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &row_scales,
                                         sizeof row_scales),
          "set B scale");
  };
  if (const auto it = plans_.find(key); it != plans_.end()) {
    if (it->second.op == nullptr) return nullptr;  // no fp8 algorithm: known already
    set_scales(it->second);
    return &it->second;
  }
  const cudaDataType_t t = cuda_type(dtype);
  Plan p = make_plan(CUDA_R_8F_E4M3, t, rows, in, out);
  // Outer-vector scaling is refused on the descriptor where cuBLASLt does not have it.
  const uint32_t a_mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
  const uint32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
  const bool modes_set =
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &a_mode,
                                     sizeof a_mode) == CUBLAS_STATUS_SUCCESS &&
      cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &b_mode,
                                     sizeof b_mode) == CUBLAS_STATUS_SUCCESS;
  set_scales(p);
  const bool chosen = modes_set && choose_algorithm(p, CUDA_R_8F_E4M3, t, rows, in, out, codes,
                                                    w.data, y, stream, true);
  return keep_fp8_plan(key, p, chosen);
}

Gemm::Plan* Gemm::keep_fp8_plan(const Key& key, Plan& p, bool chosen) {
  if (!chosen) destroy(p);  // kept empty: this shape takes another path from now on
  Plan& kept = plans_.emplace(key, p).first->second;
  return kept.op ? &kept : nullptr;
}

void Gemm::add_wide_candidates(const Plan& p, cudaDataType_t operands, cudaDataType_t output,
                               std::vector<cublasLtMatmulAlgo_t>& candidates) {
  constexpr int kMaxIds = 128, kPerId = 8;
  int ids[kMaxIds] = {};
  int num_ids = 0;
  check(cublasLtMatmulAlgoGetIds(handle_, CUBLAS_COMPUTE_32F, CUDA_R_32F, operands, operands,
                                 output, output, kMaxIds, ids, &num_ids),
        "algorithm ids");
  cublasLtMatmulPreference_t pref = make_preference(CUBLASLT_SEARCH_LIMITED_BY_ALGO_ID);
  auto add_if_valid = [&](const cublasLtMatmulAlgo_t& a) {
    cublasLtMatmulHeuristicResult_t checked = {};
    if (cublasLtMatmulAlgoCheck(handle_, p.op, p.a, p.b, p.c, p.c, &a, &checked) ==
            CUBLAS_STATUS_SUCCESS &&
        checked.workspaceSize <= kWorkspaceBytes)
      add_unique(candidates, a);
  };
  // Split-K spreads the few output tiles of a decode-sized product over more SMs; clusters
  // change how tiles share their operand loads.
  constexpr uint32_t kSplits[] = {1, 2, 3, 4, 6, 8};
  constexpr uint16_t kClusters[] = {CUBLASLT_CLUSTER_SHAPE_AUTO, CUBLASLT_CLUSTER_SHAPE_1x1x1,
                                    CUBLASLT_CLUSTER_SHAPE_2x1x1};
  for (int i = 0; i < num_ids; ++i) {
    cublasLtMatmulHeuristicResult_t results[kPerId] = {};
    bool initialized = true;
    for (auto& r : results)
      initialized = initialized && cublasLtMatmulAlgoInit(handle_, CUBLAS_COMPUTE_32F, CUDA_R_32F,
                                                          operands, operands, output, output,
                                                          ids[i], &r.algo) == CUBLAS_STATUS_SUCCESS;
    int found = 0;
    if (!initialized ||
        cublasLtMatmulAlgoGetHeuristic(handle_, p.op, p.a, p.b, p.c, p.c, pref, kPerId, results,
                                       &found) != CUBLAS_STATUS_SUCCESS)
      continue;
    for (int j = 0; j < found; ++j) {
      if (results[j].state != CUBLAS_STATUS_SUCCESS) continue;
      const cublasLtMatmulAlgo_t base = results[j].algo;
      add_if_valid(base);
      int32_t splitk_support = 0;
      uint32_t reductions = 0;
      size_t written = 0;
      cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &splitk_support,
                                        sizeof splitk_support, &written);
      cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &reductions,
                                        sizeof reductions, &written);
      const uint32_t reduction = (reductions & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE)
                                     ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                                     : CUBLASLT_REDUCTION_SCHEME_INPLACE;
      for (const uint32_t splits : kSplits) {
        if (splits > 1 && !splitk_support) break;
        for (const uint16_t cluster : kClusters) {
          cublasLtMatmulAlgo_t a = base;
          const uint32_t scheme =
              splits > 1 ? reduction : static_cast<uint32_t>(CUBLASLT_REDUCTION_SCHEME_NONE);
          if (cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splits,
                                                   sizeof splits) != CUBLAS_STATUS_SUCCESS ||
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME,
                                                   &scheme,
                                                   sizeof scheme) != CUBLAS_STATUS_SUCCESS ||
              cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID,
                                                   &cluster,
                                                   sizeof cluster) != CUBLAS_STATUS_SUCCESS)
            continue;
          add_if_valid(a);
        }
      }
    }
  }
  cublasLtMatmulPreferenceDestroy(pref);
}

// Decode-sized products are bandwidth-bound, and cuBLASLt's first choice is not always the
// fastest there (at 64 rows it picked a 64-CTA tile without split-K for Llama-3-8B's o_proj,
// 0.64 of the read ceiling on an H200): time each candidate on the real operands, the L2
// flushed before each call (the weights of a decode step never sit in L2), and keep the
// fastest. Runs once per shape, outside graph capture, before the first use.
// The buffer the tuning writes before each timed call: twice the current device's L2.
static size_t tuning_flush_bytes_of_device() {
  int l2_bytes = 0, device = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&device));
  L2KV_CUDA_CHECK(cudaDeviceGetAttribute(&l2_bytes, cudaDevAttrL2CacheSize, device));
  return 2 * static_cast<size_t>(l2_bytes);
}

cublasLtMatmulAlgo_t Gemm::fastest(const Plan& p, std::span<const cublasLtMatmulAlgo_t> candidates,
                                   const void* x, const void* w, void* y, cudaStream_t stream) {
  const size_t flush_bytes = tuning_flush_bytes_of_device();
  const bool reserved = tuning_flush_ != nullptr && tuning_flush_bytes_ >= flush_bytes;
  void* flush = reserved ? tuning_flush_ : nullptr;
  if (!reserved && cudaMalloc(&flush, flush_bytes) != cudaSuccess) {
    (void)cudaGetLastError();  // no room to tune: keep the heuristic's choice
    return candidates[0];
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  L2KV_CUDA_CHECK(cudaEventCreate(&start));
  L2KV_CUDA_CHECK(cudaEventCreate(&stop));
  const float alpha = 1.f, beta = 0.f;
  // The fastest of `reps` cold calls of one candidate; negative when it cannot run here.
  auto time_ms = [&](const cublasLtMatmulAlgo_t& algo, int reps) {
    auto matmul = [&] {
      return cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &algo,
                            workspace_, kWorkspaceBytes, stream);
    };
    if (matmul() != CUBLAS_STATUS_SUCCESS) return -1.f;
    float fastest_ms = -1.f;
    for (int rep = 0; rep < reps; ++rep) {
      L2KV_CUDA_CHECK(cudaMemsetAsync(flush, rep, flush_bytes, stream));
      L2KV_CUDA_CHECK(cudaEventRecord(start, stream));
      check(matmul(), "matmul (tuning)");
      L2KV_CUDA_CHECK(cudaEventRecord(stop, stream));
      L2KV_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.f;
      L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (fastest_ms < 0 || ms < fastest_ms) fastest_ms = ms;
    }
    return fastest_ms;
  };
  // More candidates than the heuristic gives (Tuning::kWide): one call each picks the
  // finalists, which are then timed as the heuristic's candidates are.
  std::vector<std::pair<float, size_t>> finalists;
  const bool many = candidates.size() > static_cast<size_t>(kTuneCandidates);
  for (size_t i = 0; i < candidates.size(); ++i) {
    const float ms = time_ms(candidates[i], many ? 1 : kTuneReps);
    if (ms >= 0) finalists.emplace_back(ms, i);
  }
  std::sort(finalists.begin(), finalists.end());
  if (many) {
    finalists.resize(std::min(finalists.size(), static_cast<size_t>(kTuneFinalists)));
    for (auto& [ms, i] : finalists) ms = time_ms(candidates[i], kTuneReps);
    std::sort(finalists.begin(), finalists.end());
  }
  const cublasLtMatmulAlgo_t best =
      finalists.empty() ? candidates[0] : candidates[finalists[0].second];
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!reserved) L2KV_CUDA_CHECK(cudaFree(flush));
  return best;
}

void Gemm::reserve_tuning_flush() {
  if (tuning_flush_ != nullptr) return;
  tuning_flush_bytes_ = tuning_flush_bytes_of_device();
  L2KV_CUDA_CHECK(cudaMalloc(&tuning_flush_, tuning_flush_bytes_));
}

void Gemm::set_gemv_max_rows(int rows) {
  if (rows < 0 || rows > kGemvMaxRows)
    throw Error("Gemm: GEMV row limit " + std::to_string(rows) + " outside [0, " +
                std::to_string(kGemvMaxRows) + "]");
  gemv_max_rows_ = rows;
}

bool Gemm::routes_to_gemv(int64_t rows, int64_t in, int64_t out, const void* x,
                          const void* w) const {
  return rows <= gemv_max_rows_ && out <= kGemvMaxOut && gemv_supports(rows, in, out, x, w);
}

void Gemm::run(DType dtype, bool f32_out, const void* x, const void* w, void* y, int64_t rows,
               int64_t in, int64_t out, cudaStream_t stream) {
  // Measured on an H200 (l2kv_bench_gemv, cold L2, Llama-3-8B, Qwen2.5-7B and Llama-2-7B
  // shapes, 1-16 rows; bench/results/2026-12-02-h200/gemv-v3/): the GEMV wins on matrices with
  // few output rows (o_proj 1.13-1.32x, down_proj 1.08-1.24x, the fused QKV 0.89-1.08x, at 16
  // rows as at 1-8); cuBLASLt keeps the wide ones (gate_up, LM head). A TMA ring + wgmma kernel
  // lost to the faster of the two at all 120 points measured, and its second form (k split in a
  // cluster) lost to cuBLASLt at 32-128 rows inside steps too (bench/results/
  // 2026-12-04-h200-stream-gemm-v2/).
  if (routes_to_gemv(rows, in, out, x, w)) {
    gemv(dtype, x, w, y, f32_out, rows, in, out, stream, pdl_);
    return;
  }
  matmul(plan_for(dtype, f32_out, rows, in, out, x, w, y, stream), x, w, y, stream);
}

void Gemm::matmul(const Plan& p, const void* x, const void* w, void* y, cudaStream_t stream) {
  const float alpha = 1.f, beta = 0.f;
  check(cublasLtMatmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo,
                       workspace_, kWorkspaceBytes, stream),
        "matmul");
}

bool Gemm::linear_fp8(DType dtype, const void* x, const Fp8Weights& w, void* y, int64_t rows,
                      int64_t in, int64_t out, const Fp8Scratch& scratch, cudaStream_t stream) {
  // On an H200 (bench/NOTES.md) the GEMV's row groups re-widen the weights per 16 rows: at 64
  // rows it streamed at 0.29 of the read ceiling, so larger products go to tensor cores in fp8.
  if (rows <= kFp8GemvMaxRows && gemv_fp8_supports(rows, in, out, x, w)) {
    gemv_fp8(dtype, x, w, y, rows, in, out, stream, pdl_);
    return false;
  }
  const auto quantize = [&] {
    if (!scratch.codes_ready)
      quantize_rows_fp8(dtype, x, rows, in, scratch.codes, scratch.row_scales, stream);
  };
  // quantize_rows_fp8's and cuBLASLt's fp8 layout needs: 16-byte rows and aligned buffers.
  const bool quantizable = fp8_product_shape(in, out) && scratch.codes && scratch.row_scales &&
                           reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                           reinterpret_cast<uintptr_t>(scratch.codes) % 16 == 0;
  if (quantizable && scratch.product && rows <= kFp8ScaledAfterMaxRows && w.per_channel) {
    if (const Plan* p = fp8_scaled_after_plan_for(rows, in, out, scratch.codes, w.data,
                                                  scratch.product, stream)) {
      quantize();
      matmul(*p, scratch.codes, w.data, scratch.product, stream);
      if (scratch.defer_rescale) return true;
      rescale_fp8_product(dtype, scratch.product, scratch.row_scales, w.scale, rows, out, y,
                          stream);
      return false;
    }
  }
  if (quantizable) {
    // A new shape's plan is timed on whatever the codes hold; they are written before its use.
    if (const Plan* p =
            fp8_plan_for(dtype, w, scratch.row_scales, rows, in, out, scratch.codes, y, stream)) {
      quantize();
      matmul(*p, scratch.codes, w.data, y, stream);
      return false;
    }
  }
  if (scratch.widened == nullptr)
    throw Error("Gemm: an fp8 projection of " + std::to_string(rows) +
                " rows needs a buffer to widen its weights into");
  dequantize_fp8(dtype, w, out, in, scratch.widened, stream);
  run(dtype, false, x, scratch.widened, y, rows, in, out, stream);
  return false;
}

Gemm::Plan* Gemm::fp8_scaled_after_plan_for(int64_t rows, int64_t in, int64_t out,
                                            const uint8_t* codes, const uint8_t* w, float* product,
                                            cudaStream_t stream) {
  const Key key{0, static_cast<int>(Operands::kFp8ScaledAfter), rows, in, out};
  if (const auto it = plans_.find(key); it != plans_.end())
    return it->second.op ? &it->second : nullptr;
  Plan p = make_plan(CUDA_R_8F_E4M3, CUDA_R_32F, rows, in, out);
  return keep_fp8_plan(key, p,
                       choose_algorithm(p, CUDA_R_8F_E4M3, CUDA_R_32F, rows, in, out, codes, w,
                                        product, stream, true));
}

bool Gemm::ran_fp8_product(DType dtype, int64_t rows, int64_t in, int64_t out) const {
  const auto has = [&](const Key& key) {
    const auto it = plans_.find(key);
    return it != plans_.end() && it->second.op != nullptr;
  };
  return has(Key{static_cast<int>(dtype), static_cast<int>(Operands::kFp8), rows, in, out}) ||
         has(Key{0, static_cast<int>(Operands::kFp8ScaledAfter), rows, in, out});
}

bool Gemm::fused_supported(int64_t rows, int64_t in, int64_t out, const void* x, const void* w,
                           const GemvFusion& fusion) const {
  return rows <= gemv_max_rows_ && gemv_supports(rows, in, out, x, w, fusion);
}

void Gemm::linear_fused(DType dtype, const void* x, const void* w, void* y, int64_t rows,
                        int64_t in, int64_t out, const GemvFusion& fusion, cudaStream_t stream) {
  if (!fused_supported(rows, in, out, x, w, fusion))
    throw Error("Gemm: a fused projection of " + std::to_string(rows) + " rows (" +
                std::to_string(in) + " -> " + std::to_string(out) +
                ") is beyond the GEMV's limits (gemv_max_rows " + std::to_string(gemv_max_rows_) +
                ")");
  gemv(dtype, x, w, y, false, rows, in, out, stream, pdl_, fusion);
}

void Gemm::linear(DType dtype, const void* x, const void* w, void* y, int64_t rows, int64_t in,
                  int64_t out, cudaStream_t stream) {
  run(dtype, false, x, w, y, rows, in, out, stream);
}

void Gemm::linear_untimed(DType dtype, const void* x, const void* w, void* y, int64_t rows,
                          int64_t in, int64_t out, cudaStream_t stream) {
  matmul(plan_for(dtype, false, rows, in, out, x, w, y, stream, /*timed=*/false), x, w, y, stream);
}

void Gemm::linear_f32_out(DType dtype, const void* x, const void* w, float* y, int64_t rows,
                          int64_t in, int64_t out, cudaStream_t stream) {
  run(dtype, true, x, w, y, rows, in, out, stream);
}

}  // namespace l2kv
