// Launchers of the transformer ops around attention: 16-bit activations (bf16 or fp16, the
// model's dtype) and an fp32 residual stream. Each takes a stream, checks its launch, and
// allocates nothing. Pointers to 16-bit data are untyped; `dtype` says which.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"
#include "l2kv/kernels/model/fp8_activations.h"
#include "l2kv/kernels/model/row_sumsq.h"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv::ops {

// residual[t, :] = embed[tokens[t], :] * scale (fp32 residual stream; Gemma scales by
// sqrt(hidden)); with `sumsq`, also sumsq[t] = the sum of residual[t, :]^2 in fixed point
// (row_sumsq.h; for a fused RMSNorm prologue, gemv.h).
void embed(DType dtype, const int32_t* tokens, int32_t num_tokens, const void* embed,
           int32_t hidden, float* residual, cudaStream_t stream, RowSumsq* sumsq = nullptr,
           float scale = 1.f);

// A mixture of experts' output as add_rmsnorm's addend: row t adds sum over j < top_k of
// weights[s] * y[row(s), :] for its slots s = t top_k + j, in fp32, where row(s) = s, or
// slot_rows[s] when set (y grouped by expert); y holds 16-bit expert outputs.
struct ExpertSum {
  const void* y = nullptr;
  const float* weights = nullptr;
  int32_t top_k = 0;
  const int32_t* slot_rows = nullptr;
};

// The widest row the fp8 forms of add_rmsnorm and gated_mul take (a row's blocks hold it in
// registers).
inline constexpr int32_t kFp8OpsMaxWidth = 32768;
// Whether the fp8 forms of add_rmsnorm and gated_mul take rows `width` wide.
inline bool fp8_ops_take(int64_t width) {
  return width % 8 == 0 && width <= kFp8OpsMaxWidth;
}

// If `add` is set: residual += add (fp32), or with `add_weight` residual += RMSNorm(add) *
// add_weight (Gemma 3's norms of the attention and MLP outputs); if `experts.y` is set:
// residual += that sum; if `add_fp8` is set (instead of `add`, without `add_weight`): residual +=
// that fp8 product scaled back, the 16-bit values rescale_fp8_product() would write. Then out =
// RMSNorm(residual) * weight, and with `out_fp8` also out's rows quantized as
// quantize_rows_fp8() would quantize them (the fp8 forms need hidden % 8 == 0 and hidden <=
// kFp8OpsMaxWidth). `pdl` (here and
// in gated_mul): launch with programmatic dependent launch; the kernel waits for the one ahead
// before it reads anything.
void add_rmsnorm(DType dtype, float* residual, const void* add, const void* weight, float eps,
                 int32_t num_tokens, int32_t hidden, void* out, cudaStream_t stream,
                 bool pdl = false, const ExpertSum& experts = {}, const void* add_weight = nullptr,
                 const Fp8Product& add_fp8 = {}, const Fp8Rows& out_fp8 = {});

// Qwen3's RMSNorm of each q and k head before RoPE: weights [head_dim] in the model's dtype and
// the model's rms_norm_eps. Null weights (the default) skip the norm of q or k.
struct QkNorm {
  const void* q_weight = nullptr;
  const void* k_weight = nullptr;
  float eps = 0.f;
};

// Adds `bias` (nullable, [q_dim + 2 kv_dim]) to the fused QKV projection [tokens, q|k|v], applies
// `qk_norm` (rounding to the model's dtype after the normalization and after the weight, as
// transformers does), neox RoPE to q and k at `positions`, writes q to `q_out` [tokens, q_heads,
// head_dim] and k, v into the paged cache (kv.dtype, or E4M3 / scale for an fp8 cache, the scales
// read from kv.device_scales where set) at `slots` (physical block * block_size + offset; -1 =
// skip). `pdl`: launch with programmatic dependent launch, so the kernel may start while the one
// before it (the QKV projection) finishes; it waits for that kernel's writes before reading.
// `pair_rows`: qkv and bias are in paired row order (paired_rows.h: each head a group), else
// feature order. With `qkv_fp8` set, the projection is that fp8 product, scaled back as
// rescale_fp8_product() would (qkv unused).
void rope_and_cache(const void* qkv, const void* bias, const int32_t* positions,
                    const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                    int32_t q_heads, const PagedKvCache& kv, void* q_out, cudaStream_t stream,
                    bool pdl = false, const QkNorm& qk_norm = {}, bool pair_rows = false,
                    const Fp8Product& qkv_fp8 = {});

// Calculated fp8 KV scales (kv_scales.h) of one layer from the fused QKV projection of a step:
// over the rows with a slot (>= 0), the largest |K| (bias added, k norm and RoPE applied,
// rounded to the model's dtype: what rope_and_cache stores, bit for bit) and |V|. Writes scales[0]
// = kv_scale_from_amax(amax K, kKvScaleKeyRange) and scales[1] the same for V (device memory),
// which rope_and_cache and the attention kernels then read through kv.device_scales. Arguments
// as rope_and_cache's; launched in stream order (the projection has finished).
void calculate_kv_scales(const void* qkv, const void* bias, const int32_t* positions,
                         const int32_t* slots, const float* inv_freq, int32_t num_tokens,
                         int32_t q_heads, const PagedKvCache& kv, float* scales,
                         cudaStream_t stream, const QkNorm& qk_norm = {}, bool pair_rows = false);

// The gate's activation in a gated MLP: SiLU (SwiGLU: Llama, Qwen, Mistral) or GELU's tanh form
// (GeGLU: Gemma).
enum class GateActivation : uint8_t { kSilu, kGeluTanh };

// out[t, i] = act(gate[t, i]) * up[t, i]: gate_up[t] is [gate | up], or with `interleaved`
// gate and up alternate in groups of 8 features (gemv.h's kSiluMul layout; inter % 8 == 0).
// With `gate_up_fp8` set, gate_up is that fp8 product scaled back (gate_up itself unused); with
// `out_fp8`, out's rows are also quantized as quantize_rows_fp8() would quantize them (both fp8
// forms need inter % 8 == 0 and inter <= kFp8OpsMaxWidth).
void gated_mul(DType dtype, const void* gate_up, int32_t num_tokens, int32_t inter, void* out,
               cudaStream_t stream, bool pdl = false, bool interleaved = false,
               GateActivation activation = GateActivation::kSilu,
               const Fp8Product& gate_up_fp8 = {}, const Fp8Rows& out_fp8 = {});

// Each row's RMSNorm scale, rsqrt(sumsq[t] / width + eps) with sumsq in fixed point
// (row_sumsq.h), for a product whose x was a weighted x (gemv.h: round(norm weight x residual),
// the norm's 1 / rms still to apply). `clear_sumsq` (nullable): an accumulator zeroed after the
// wait, one per row, for the residual epilogue after the op (as the GEMV's weighted-x prologue
// clears it).
struct RowRmsScale {
  const RowSumsq* sumsq = nullptr;
  RowSumsq* clear_sumsq = nullptr;
  int32_t width = 0;
  float eps = 0.f;
};

// SiLU x up of gate_up on a weighted x, from cuBLASLt's float32 product [rows, 2 inter] (gate
// and up laid out as gated_mul's): g and u are the product times the row's rms.scale, each rounded
// to `dtype`, and out[t, i] = round(silu(g) * u): what the GEMV's kSiluMul epilogue does with a
// weighted x. inter % 8 == 0, at most 256 rows; `pdl` as gated_mul's.
void weighted_silu_mul(DType dtype, const float* gate_up, const RowRmsScale& rms,
                       int32_t num_tokens, int32_t inter, void* out, cudaStream_t stream,
                       bool pdl = false, bool interleaved = false);

// values[i] = cap * tanh(values[i] / cap) (Gemma's final logit soft-capping).
void soft_cap(float* values, int64_t count, float cap, cudaStream_t stream);

// out[r, :] = in[rows[r], :] for 16-bit rows of `width`.
void gather_rows(const void* in, const int32_t* rows, int32_t num_rows, int32_t width, void* out,
                 cudaStream_t stream);

}  // namespace l2kv::ops
