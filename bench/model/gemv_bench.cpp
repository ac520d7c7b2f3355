// l2kv_bench_gemv: the decode projections (y = x W^T at 1..256 rows) through cuBLASLt and the
// mma.sync GEMV (rows <= 16), each as GB/s and as a fraction of the streaming-read ceiling
// measured in the same run. The "fused" column is the GEMV in the form a decode step runs it
// (fused_form below, approximately): at one row (the fused layer) QKV with RMSNorm in its
// prologue and RoPE + the paged-KV write in its epilogue (RMSNorm only with q/k norms), O and
// down adding into the fp32 residual, gate_up with RMSNorm and SiLU x up; at 2-16 rows QKV's
// RoPE epilogue (no q/k norms, at most 8192 outputs), and for bf16 models O and down adding into
// the residual (the weighted x and its scales are not modelled), the others plain. Its GB/s counts
// the same bytes as the plain call's, so the columns compare the weights' time; the JSON names each
// point's form. Cold L2 (default): before every timed call a buffer of twice the L2 is written and
// then a clean one read (so no dirty lines are written back during the call), and each shape's
// weights rotate over copies exceeding the L2. Warm L2 (--l2 warm): no flush, one weight copy. Per
// model, the sum over one decode step's projections (all layers plus the LM head) gives the
// projections' share of MBU. Models named NAME-fp8 (synthetic:llama3-8b-fp8) hold the layers'
// projections as E4M3 codes with per-channel scales, as such a checkpoint's decode step reads them:
// the "mma GEMV" column is then gemv_fp8 and the "fused" column the fused GEMV with fp8 weights,
// each over the fp8 bytes; the 16-bit cuBLAS column is not run for those projections (the LM head
// stays 16-bit and runs every column).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench_kernels.h"
#include "bench_timing.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_array.h"
#include "l2kv/core/device_info.h"
#include "l2kv/engine/cuda_step_state.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/kernels/model/gemv.h"
#include "l2kv/kernels/model/gemv_fp8.h"
#include "l2kv/kernels/random_fill.h"
#include "l2kv/model/model_config.h"

namespace l2kv::bench {
namespace {

// Weight copies rotated per shape: together at least this many times the L2.
constexpr int64_t kL2Multiple = 4;
// The most rows a point may have: a decode step of 256 sequences.
constexpr int64_t kMaxRows = 256;

struct Options {
  std::vector<std::string> models{"llama3-8b", "qwen2.5-7b", "llama2-7b"};
  std::vector<int64_t> rows{1, 2, 4, 8, 16, 32, 64, 128};
  std::string dtype = "bf16";
  std::string l2 = "cold";
  std::string gemm_tuning = "heuristic";  // cuBLASLt's choice: heuristic | wide
  int reps = 50;
  bool graph = true;
  std::string json_path;
};

// The GEMV forms a decode step runs (kNone: the plain GEMV, or not the GEMV at all).
enum class Fused : uint8_t {
  kNone,
  kNormRopeCache,  // QKV at one row: RMSNorm prologue, RoPE + paged-KV write epilogue
  kNormStore,      // QKV at one row of a model with q/k norms (RoPE needs the whole head)
  kRopeCache,      // QKV at 2-16 rows
  kResidualAdd,    // O and down at one row (bf16 models: 1-16 rows)
  kNormSiluMul,    // gate_up at one row
};

const char* fused_name(Fused f) {
  switch (f) {
    case Fused::kNone:
      return "none";
    case Fused::kNormRopeCache:
      return "norm+rope_cache";
    case Fused::kNormStore:
      return "norm";
    case Fused::kRopeCache:
      return "rope_cache";
    case Fused::kResidualAdd:
      return "residual_add";
    case Fused::kNormSiluMul:
      return "norm+silu_mul";
  }
  return "none";
}

struct Projection {
  std::string name;
  int64_t in, out;
  bool f32_out;
  int64_t per_step;  // matrices of this shape one decode step reads
  Fused fused;       // its form at one row
};

std::vector<Projection> projections(const ModelConfig& c) {
  const int64_t q_dim = c.num_q_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  const int64_t h = c.hidden_size, i = c.intermediate_size, layers = c.num_layers;
  return {{"qkv", h, q_dim + 2 * kv_dim, false, layers,
           c.qk_norm ? Fused::kNormStore : Fused::kNormRopeCache},
          {"o", q_dim, h, false, layers, Fused::kResidualAdd},
          {"gate_up", h, 2 * i, false, layers, Fused::kNormSiluMul},
          {"down", i, h, false, layers, Fused::kResidualAdd},
          {"lm_head", h, c.vocab_size, true, 1, Fused::kNone}};
}

// The form CudaModel runs `p` in at `rows` rows (cuda_model.cpp). One row: the fused layer's
// forms (fp8 projections too; gemv_fp8 above one row). 2-16 rows of a bf16 model (its default
// fused layer, CudaModel::default_fused_layer_max_rows): QKV's RoPE epilogue, O and down adding
// into the residual, gate_up on cuBLASLt (the weighted x and its scale are not modelled here).
// fp16 at 2-16 rows: QKV's RoPE epilogue where Gemm sends QKV to the GEMV and the model has no
// q/k norms.
Fused fused_form(const ModelConfig& c, const Projection& p, int64_t rows) {
  if (c.fp8_weights) return rows == 1 ? p.fused : Fused::kNone;
  if (rows > Gemm::kDefaultGemvMaxRows) return Fused::kNone;  // cuBLASLt
  if (rows == 1) return p.fused;
  if (c.dtype == DType::kBFloat16 && p.fused == Fused::kResidualAdd) return Fused::kResidualAdd;
  const bool qkv_on_gemv = p.fused == Fused::kNormRopeCache && p.out <= Gemm::kGemvMaxOut;
  return qkv_on_gemv ? Fused::kRopeCache : Fused::kNone;
}

// The inputs and outputs of the fused forms for up to kGemvMaxRows rows: the fp32 residual
// rows the norm reads (RMS about 1: uniform in [-1, 1), their sums of squares hidden / 3), the
// norm's weight, a separate residual the residual-add epilogue adds into (so timing O and down
// does not change what gate_up's norm reads), the QKV bias where the model has one, and for
// QKV's epilogue one cache slot per row in a paged cache of the model's KV heads, positions and
// frequencies.
class FusedBuffers {
 public:
  FusedBuffers(const ModelConfig& c, DType dtype, cudaStream_t stream)
      : config_(c),
        rows_(kGemvMaxRows),
        width_(std::max({c.hidden_size, c.intermediate_size, int64_t{c.num_q_heads} * c.head_dim})),
        residual_(static_cast<size_t>(rows_ * width_)),
        added_residual_(static_cast<size_t>(rows_ * width_)),
        norm_weight_(static_cast<size_t>(width_)),
        bias_(static_cast<size_t>((c.num_q_heads + 2 * c.num_kv_heads) * c.head_dim)),
        sumsq_(static_cast<size_t>(rows_)),
        residual_sumsq_(static_cast<size_t>(rows_)),
        positions_(static_cast<size_t>(rows_)),
        slots_(static_cast<size_t>(rows_)),
        inv_freq_(static_cast<size_t>(c.head_dim / 2)),
        q_(static_cast<size_t>(rows_ * c.num_q_heads * c.head_dim)),
        k_pool_(static_cast<size_t>(rows_ * c.num_kv_heads * c.head_dim)),
        v_pool_(static_cast<size_t>(rows_ * c.num_kv_heads * c.head_dim)) {
    std::vector<float> residual(static_cast<size_t>(rows_ * width_));
    std::mt19937 rng(21);
    std::uniform_real_distribution<float> uniform(-1.f, 1.f);
    for (float& v : residual) v = uniform(rng);
    upload(residual_.ptr, residual, stream);
    upload(added_residual_.ptr, residual, stream);
    fill_random(norm_weight_.ptr, width_, dtype, 1.f, 22, stream);
    fill_random(bias_.ptr, static_cast<int64_t>(bias_.size()), dtype, 0.5f, 23, stream);
    std::vector<int32_t> positions(rows_), slots(rows_);
    for (int64_t r = 0; r < rows_; ++r) {
      positions[r] = static_cast<int32_t>(1000 + 37 * r);
      slots[r] = static_cast<int32_t>(r);
    }
    upload(positions_.ptr, positions, stream);
    upload(slots_.ptr, slots, stream);
    upload(inv_freq_.ptr, rope_inverse_frequencies(c.rope, c.head_dim), stream);
    upload(sumsq_.ptr,
           std::vector<RowSumsq>(static_cast<size_t>(rows_), to_row_sumsq(c.hidden_size / 3.f)),
           stream);
    kv_.k_pool = k_pool_.ptr;
    kv_.v_pool = v_pool_.ptr;
    kv_.num_blocks = 1;
    kv_.block_size = static_cast<int32_t>(rows_);
    kv_.num_kv_heads = c.num_kv_heads;
    kv_.head_dim = c.head_dim;
    kv_.dtype = dtype;
  }

  GemvFusion fusion(Fused form) const {
    GemvFusion f;
    if (form == Fused::kNormRopeCache || form == Fused::kNormStore || form == Fused::kNormSiluMul) {
      f.norm_residual = residual_.ptr;
      f.norm_weight = norm_weight_.ptr;
      f.norm_sumsq = sumsq_.ptr;
      f.eps = static_cast<float>(config_.rms_norm_eps);
    }
    if (form == Fused::kNormSiluMul) f.epilogue = GemvEpilogue::kSiluMul;
    if (form == Fused::kResidualAdd) {
      f.epilogue = GemvEpilogue::kResidualAdd;
      f.residual = added_residual_.ptr;
      f.residual_sumsq = residual_sumsq_.ptr;
    }
    if (form == Fused::kNormRopeCache || form == Fused::kRopeCache) {
      f.epilogue = GemvEpilogue::kRopeCache;
      f.rope.bias = config_.qkv_bias ? bias_.ptr : nullptr;
      f.rope.positions = positions_.ptr;
      f.rope.slots = slots_.ptr;
      f.rope.inv_freq = inv_freq_.ptr;
      f.rope.q_out = q_.ptr;
      f.rope.q_heads = static_cast<int32_t>(config_.num_q_heads);
      f.rope.kv = kv_;
    }
    return f;
  }

 private:
  template <typename T>
  static void upload(T* device, const std::vector<T>& host, cudaStream_t stream) {
    L2KV_CUDA_CHECK(cudaMemcpyAsync(device, host.data(), host.size() * sizeof(T),
                                    cudaMemcpyHostToDevice, stream));
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  ModelConfig config_;
  int64_t rows_, width_;
  DeviceArray<float> residual_, added_residual_;
  DeviceArray<uint16_t> norm_weight_, bias_;
  DeviceArray<RowSumsq> sumsq_, residual_sumsq_;
  DeviceArray<int32_t> positions_, slots_;
  DeviceArray<float> inv_freq_;
  DeviceArray<uint16_t> q_, k_pool_, v_pool_;
  PagedKvCache kv_;
};

// Streaming-read ceiling over 2 GiB, median of 20.
double measure_read_ceiling_gbps(const DeviceInfo& info, cudaStream_t stream) {
  const int64_t bytes = int64_t{2} << 30;
  DeviceArray<uint8_t> data(bytes);
  DeviceArray<uint32_t> sink(static_cast<size_t>(info.sm_count) * 8 * 256);
  fill_random(data.ptr, bytes / 2, DType::kBFloat16, 1.f, 99, stream);
  auto launch = [&](int) {
    launch_streaming_read(data.ptr, bytes, sink.ptr, info.sm_count, stream);
  };
  launch(0);
  const double us = time_median_us(20, launch, stream);
  return bytes / (us * 1e-6) / 1e9;
}

// Outputs of the two paths on the same inputs: max |a - b| / max |a|.
double relative_difference(const void* a, const void* b, int64_t count, bool f32, DType dtype) {
  auto download = [&](const void* p) {
    std::vector<double> v(count);
    if (f32) {
      std::vector<float> f(count);
      L2KV_CUDA_CHECK(cudaMemcpy(f.data(), p, count * 4, cudaMemcpyDeviceToHost));
      std::copy(f.begin(), f.end(), v.begin());
    } else {
      std::vector<uint16_t> h(count);
      L2KV_CUDA_CHECK(cudaMemcpy(h.data(), p, count * 2, cudaMemcpyDeviceToHost));
      for (int64_t i = 0; i < count; ++i) v[i] = dtype_bits_to_float(dtype, h[i]);
    }
    return v;
  };
  const auto va = download(a), vb = download(b);
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < count; ++i) {
    diff = std::max(diff, std::abs(va[i] - vb[i]));
    scale = std::max(scale, std::abs(va[i]));
  }
  return scale > 0 ? diff / scale : diff;
}

// Leaves the L2 holding none of the timed call's data and no dirty lines: writes a buffer of
// twice the L2, then reads a clean one of the same size.
class L2Flush {
 public:
  L2Flush(const DeviceInfo& info, cudaStream_t stream)
      : bytes_((2 * info.l2_bytes + 63) / 64 * 64),
        sm_count_(info.sm_count),
        stream_(stream),
        dirty_(static_cast<size_t>(bytes_)),
        clean_(static_cast<size_t>(bytes_)),
        sink_(static_cast<size_t>(info.sm_count) * 8 * 256) {
    L2KV_CUDA_CHECK(cudaMemsetAsync(clean_.ptr, 0, bytes_, stream));
  }
  void operator()() const {
    L2KV_CUDA_CHECK(cudaMemsetAsync(dirty_.ptr, 1, bytes_, stream_));
    launch_streaming_read(clean_.ptr, bytes_, sink_.ptr, sm_count_, stream_);
  }

 private:
  int64_t bytes_;
  int sm_count_;
  cudaStream_t stream_;
  DeviceArray<uint8_t> dirty_, clean_;
  DeviceArray<uint32_t> sink_;
};

struct Timing {
  double cublas_us = 0;  // 0: not run (fp8 weights)
  double gemv_us = 0;    // 0: not run (rows > 16)
  double fused_us = 0;   // 0: not run (rows > 16 or no fused form)
  // The kernel a decode step runs for the projection: the fused form where there is one, else the
  // GEMV, else cuBLAS.
  double step_us() const {
    if (fused_us > 0) return fused_us;
    if (gemv_us > 0) return gemv_us;
    return cublas_us;
  }
};

// One timing column: µs and % of the ceiling, or dashes where it was not run.
void print_column(double us, double bytes, double ceiling) {
  if (us > 0)
    std::printf("%8.2f %5.1f%% | ", us, 100 * bytes / (us * 1e-6) / 1e9 / ceiling);
  else
    std::printf("%8s %6s | ", "-", "-");
}

int run(const Options& opt) {
  const DeviceInfo info = query_device_info(0);
  cudaStream_t stream = nullptr;
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const DType dtype = opt.dtype == "fp16" ? DType::kFloat16 : DType::kBFloat16;
  const bool cold = opt.l2 == "cold";
  const double ceiling = measure_read_ceiling_gbps(info, stream);
  std::printf("l2kv_bench_gemv on %s (%d SMs, L2 %.0f MiB), %s, %s timing, %s L2, median of %d\n",
              info.name.c_str(), info.sm_count, info.l2_bytes / 1048576.0,
              std::string(dtype_name(dtype)).c_str(), opt.graph ? "graph" : "eager", opt.l2.c_str(),
              opt.reps);
  std::printf("streaming-read ceiling: %.0f GB/s; cuBLASLt tuning: %s\n\n", ceiling,
              opt.gemm_tuning.c_str());
  std::printf("%-11s %-8s %6s %7s %4s | %8s %6s | %8s %6s | %8s %6s | %8s\n", "model", "proj", "in",
              "out", "rows", "cuBLAS", "%ceil", "mma GEMV", "%ceil", "fused", "%ceil", "rel.diff");
  std::printf("%-11s %-8s %6s %7s %4s | %8s %6s | %8s %6s | %8s %6s |\n", "", "", "", "", "", "us",
              "", "us", "", "us", "");

  const L2Flush flush_l2(info, stream);
  auto flush = [&] {
    if (cold) flush_l2();
  };
  Gemm gemm;
  gemm.set_gemv_max_rows(0);  // cuBLASLt only; the other kernels are called directly
  gemm.set_tuning(opt.gemm_tuning == "wide" ? Gemm::Tuning::kWide : Gemm::Tuning::kHeuristic);
  nlohmann::json results = nlohmann::json::array(), steps = nlohmann::json::array();
  for (const auto& model : opt.models) {
    const ModelConfig config = ModelConfig::synthetic(model);
    const auto projs = projections(config);
    const FusedBuffers fused_buffers(config, dtype, stream);
    // step totals per row count: bytes, µs on cuBLAS, µs of the kernels a step runs
    std::vector<double> step_bytes(opt.rows.size()), step_cublas(opt.rows.size()),
        step_run(opt.rows.size());
    for (const auto& p : projs) {
      const bool fp8 = config.fp8_weights && !p.f32_out;  // the LM head stays 16-bit
      const int64_t w_bytes = p.in * p.out * (fp8 ? 1 : 2);
      const int64_t copies =
          cold ? std::max<int64_t>(1, (kL2Multiple * info.l2_bytes + w_bytes - 1) / w_bytes)
               : 1;  // rotate past the L2
      DeviceArray<uint16_t> w(static_cast<size_t>(copies * p.in * p.out / (fp8 ? 2 : 1)));
      if (fp8)
        fill_random_fp8_e4m3(w.ptr, copies * p.in * p.out, 448.f, 17, stream);
      else
        fill_random(w.ptr, copies * p.in * p.out, dtype, 1.f, 17, stream);
      // Per-channel scales: codes of up to 448 times 1 / 448, weights in [-1, 1) as the 16-bit
      // ones.
      DeviceArray<float> fp8_scale(static_cast<size_t>(p.out));
      {
        const std::vector<float> scales(static_cast<size_t>(p.out), 1.f / 448.f);
        L2KV_CUDA_CHECK(cudaMemcpy(fp8_scale.ptr, scales.data(), scales.size() * sizeof(float),
                                   cudaMemcpyHostToDevice));
      }
      const int64_t max_rows = *std::max_element(opt.rows.begin(), opt.rows.end());
      DeviceArray<uint16_t> x(static_cast<size_t>(max_rows * p.in));
      fill_random(x.ptr, max_rows * p.in, dtype, 1.f, 18, stream);
      DeviceArray<float> y_cublas(static_cast<size_t>(max_rows * p.out));
      DeviceArray<float> y_gemv(static_cast<size_t>(max_rows * p.out));
      DeviceArray<uint16_t> y_fused(static_cast<size_t>(max_rows * p.out));
      auto weights = [&](int rep) {
        return reinterpret_cast<const uint8_t*>(w.ptr) +
               (rep % copies) * w_bytes;  // uint8 view: w_bytes per copy
      };
      for (size_t ri = 0; ri < opt.rows.size(); ++ri) {
        const int64_t rows = opt.rows[ri];
        auto cublas = [&](int rep) {
          if (p.f32_out)
            gemm.linear_f32_out(dtype, x.ptr, weights(rep), y_cublas.ptr, rows, p.in, p.out,
                                stream);
          else
            gemm.linear(dtype, x.ptr, weights(rep), y_cublas.ptr, rows, p.in, p.out, stream);
        };
        auto mma_gemv = [&](int rep) {
          if (fp8)
            gemv_fp8(dtype, x.ptr, Fp8Weights{weights(rep), fp8_scale.ptr, true}, y_gemv.ptr, rows,
                     p.in, p.out, stream);
          else
            gemv(dtype, x.ptr, weights(rep), y_gemv.ptr, p.f32_out, rows, p.in, p.out, stream);
        };
        const Fused form = fused_form(config, p, rows);
        GemvFusion fusion = fused_buffers.fusion(form);
        if (fp8) {
          fusion.fp8_scale = fp8_scale.ptr;
          fusion.fp8_per_channel = true;
        }
        auto fused_gemv = [&](int rep) {
          gemv(dtype, x.ptr, weights(rep), y_fused.ptr, false, rows, p.in, p.out, stream, false,
               fusion);
        };
        const bool run_gemv = rows <= (fp8 ? kGemvFp8MaxRows : kGemvMaxRows);
        const bool run_fused = rows <= kGemvMaxRows && form != Fused::kNone;
        // Warm-up: plans cuBLASLt's shape outside any capture, on copy 0, so the outputs compared
        // below come from the same weights. With fp8 weights there is no 16-bit output to compare
        // against (the tests check gemv_fp8).
        if (!fp8) cublas(0);
        if (run_gemv) mma_gemv(0);
        L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
        const double gemv_diff =
            run_gemv && !fp8
                ? relative_difference(y_cublas.ptr, y_gemv.ptr, rows * p.out, p.f32_out, dtype)
                : 0;
        Timing t;
        if (!fp8) t.cublas_us = time_median_us(opt.reps, cublas, stream, opt.graph, flush);
        if (run_gemv) t.gemv_us = time_median_us(opt.reps, mma_gemv, stream, opt.graph, flush);
        if (run_fused) {
          fused_gemv(0);  // outside any capture: the kernel's shared-memory limit is set here
          t.fused_us = time_median_us(opt.reps, fused_gemv, stream, opt.graph, flush);
        }
        const double bytes =
            static_cast<double>(w_bytes) + rows * p.in * 2.0 + rows * p.out * (p.f32_out ? 4 : 2);
        auto gbps = [&](double us) { return us > 0 ? bytes / (us * 1e-6) / 1e9 : 0.0; };
        const double cublas_gbps = gbps(t.cublas_us), gemv_gbps = gbps(t.gemv_us),
                     fused_gbps = gbps(t.fused_us);
        std::printf("%-11s %-8s %6lld %7lld %4lld | ", model.c_str(),
                    (p.name + (fp8 ? " fp8" : "")).c_str(), static_cast<long long>(p.in),
                    static_cast<long long>(p.out), static_cast<long long>(rows));
        for (const double us : {t.cublas_us, t.gemv_us, t.fused_us})
          print_column(us, bytes, ceiling);
        if (fp8 || !run_gemv)
          std::printf("%8s\n", "-");
        else
          std::printf("%8.1e\n", gemv_diff);
        results.push_back(
            {{"model", model},
             {"projection", p.name},
             {"in", p.in},
             {"out", p.out},
             {"rows", rows},
             {"f32_out", p.f32_out},
             {"fp8_weights", fp8},
             {"bytes", bytes},
             {"weight_copies", copies},
             {"cublas_us", fp8 ? nlohmann::json() : nlohmann::json(t.cublas_us)},
             {"cublas_gbps", fp8 ? nlohmann::json() : nlohmann::json(cublas_gbps)},
             {"cublas_fraction_of_ceiling",
              fp8 ? nlohmann::json() : nlohmann::json(cublas_gbps / ceiling)},
             {"gemv_us", run_gemv ? nlohmann::json(t.gemv_us) : nlohmann::json()},
             {"gemv_gbps", run_gemv ? nlohmann::json(gemv_gbps) : nlohmann::json()},
             {"gemv_fraction_of_ceiling",
              run_gemv ? nlohmann::json(gemv_gbps / ceiling) : nlohmann::json()},
             {"fused_form", fused_name(form)},
             {"fused_us", run_fused ? nlohmann::json(t.fused_us) : nlohmann::json()},
             {"fused_gbps", run_fused ? nlohmann::json(fused_gbps) : nlohmann::json()},
             {"fused_fraction_of_ceiling",
              run_fused ? nlohmann::json(fused_gbps / ceiling) : nlohmann::json()},
             {"gemv_max_relative_difference", gemv_diff}});
        step_bytes[ri] += bytes * p.per_step;
        step_cublas[ri] += t.cublas_us * p.per_step;
        step_run[ri] += t.step_us() * p.per_step;
      }
    }
    for (size_t ri = 0; ri < opt.rows.size(); ++ri) {
      const double cublas_gbps = step_bytes[ri] / (step_cublas[ri] * 1e-6) / 1e9;
      const double run_gbps = step_bytes[ri] / (step_run[ri] * 1e-6) / 1e9;
      std::printf("%-11s one step's projections at %3lld rows: %.2f GB; ", model.c_str(),
                  static_cast<long long>(opt.rows[ri]), step_bytes[ri] / 1e9);
      if (!config.fp8_weights)  // fp8 weights do not run cuBLAS
        std::printf("cuBLAS %.3f ms (%.1f%% of ceiling), ", step_cublas[ri] / 1e3,
                    100 * cublas_gbps / ceiling);
      std::printf("as a step runs them (fused, else GEMV, else cuBLAS) %.3f ms (%.1f%%)\n",
                  step_run[ri] / 1e3, 100 * run_gbps / ceiling);
      nlohmann::json step = {{"model", model},
                             {"rows", opt.rows[ri]},
                             {"bytes", step_bytes[ri]},
                             {"step_kernels_ms", step_run[ri] / 1e3},
                             {"step_kernels_fraction_of_ceiling", run_gbps / ceiling}};
      if (!config.fp8_weights) {
        step["cublas_ms"] = step_cublas[ri] / 1e3;
        step["cublas_fraction_of_ceiling"] = cublas_gbps / ceiling;
      }
      steps.push_back(step);
    }
    std::printf("\n");
  }
  std::printf(
      "GB/s counts W once plus x and y (for the fused forms too). %s rel.diff: max |cuBLAS - "
      "GEMV| / max |cuBLAS| over the mma GEMV's outputs.\n",
      cold ? "Cold L2: a 2x-L2 write and a clean 2x-L2 read before each call, weights rotated "
             "over copies totalling >= 4x the L2."
           : "Warm L2: no flush, one weight copy.");
  if (!opt.json_path.empty()) {
    const nlohmann::json doc = {{"device", info.name},
                                {"sm_count", info.sm_count},
                                {"l2_bytes", info.l2_bytes},
                                {"dtype", std::string(dtype_name(dtype))},
                                {"timing", opt.graph ? "graph" : "eager"},
                                {"l2", opt.l2},
                                {"reps", opt.reps},
                                {"gemm_tuning", opt.gemm_tuning},
                                {"read_ceiling_gbps", ceiling},
                                {"results", results},
                                {"steps", steps}};
    std::ofstream(opt.json_path) << doc.dump(2) << "\n";
    std::printf("wrote %s\n", opt.json_path.c_str());
  }
  cudaStreamDestroy(stream);
  return 0;
}

}  // namespace
}  // namespace l2kv::bench

int main(int argc, char** argv) {
  l2kv::bench::Options opt;
  CLI::App app{"l2kv_bench_gemv: decode projections, cuBLASLt against the weight-streaming GEMV"};
  app.add_option(
         "--models", opt.models,
         "Synthetic model shapes (llama3-8b, qwen2.5-7b, ...; NAME-fp8 for E4M3 projections)")
      ->capture_default_str();
  app.add_option("--rows", opt.rows, "Rows of x (decode batch)")
      ->check(CLI::Range(int64_t{1}, l2kv::bench::kMaxRows))
      ->capture_default_str();
  app.add_option("--dtype", opt.dtype, "bf16 or fp16")
      ->check(CLI::IsMember({"bf16", "fp16"}))
      ->capture_default_str();
  app.add_option("--l2", opt.l2, "cold (flush before each call) or warm")
      ->check(CLI::IsMember({"cold", "warm"}))
      ->capture_default_str();
  app.add_option("--gemm-tuning", opt.gemm_tuning,
                 "cuBLASLt's algorithm choice: heuristic (its 32 suggestions timed) or wide "
                 "(Gemm::Tuning::kWide)")
      ->check(CLI::IsMember({"heuristic", "wide"}))
      ->capture_default_str();
  app.add_option("--reps", opt.reps, "Timed calls per point (median reported)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_flag("!--no-graph", opt.graph,
               "Time eagerly launched calls instead of one captured graph per point");
  app.add_option("--json", opt.json_path, "Write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  try {
    if (!l2kv::cuda_device_available()) {
      std::fprintf(stderr, "l2kv_bench_gemv: no CUDA GPU on this machine\n");
      return 2;
    }
    return l2kv::bench::run(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "l2kv_bench_gemv: %s\n", e.what());
    return 1;
  }
}
