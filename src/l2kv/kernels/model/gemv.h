// Weight-streaming skinny GEMM for decode: y[rows, out] = x[rows, in] * W[out, in]^T with
// rows = 1..16, 16-bit x (bf16 or fp16), W in x's dtype or E4M3 with per-row scales
// (GemvFusion::fp8_scale), fp32 accumulation on tensor cores. At these
// row counts a projection is a read of W and nothing else, so the kernel is built to keep the
// HBM busy: each thread has several 16-byte weight loads in flight, each weight byte is read
// once, the activations come from L1/L2. Gemm::linear routes small row counts here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"
#include "l2kv/kernels/model/row_sumsq.h"
#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv {

// The largest `rows` the kernel takes (two 8-column tensor-core tiles).
inline constexpr int64_t kGemvMaxRows = 16;

// What gemv() does around the product, so a decoder layer runs in five kernels (QKV, attention,
// O, gate_up, down; at 2-16 rows of a bf16 model six: gate_up on cuBLASLt over the weighted x,
// then ops::weighted_silu_mul) instead of nine.
//
// Prologue, when `norm_residual` is set: x is not read but computed, x[m, k] =
// round(norm_weight[k] * (norm_residual[m, k] * rsqrt(norm_sumsq[m] / in + eps))), the same
// rounding as ops::add_rmsnorm. norm_sumsq holds each row's sum of squares (row_sumsq.h: fixed
// point), accumulated by the kernel that last wrote the residual (a kResidualAdd epilogue, or
// ops::embed). After waiting for the kernel ahead, block 0 zeroes `clear_sumsq` (kGemvMaxRows
// values, nullable): the accumulator the next residual epilogue adds into.
//
// Weighted x, when `norm_sumsq` is set without `norm_residual`: x holds round(norm_weight[k] *
// residual[m, k]) (a kResidualAdd epilogue's `weighted_x`), and row m's sums are multiplied by
// rsqrt(norm_sumsq[m] / in + eps) before the epilogue: the RMSNorm with no work before the
// products (the same relative rounding error as ops::add_rmsnorm's where weight x residual is
// in the dtype's normal range: bf16's, not always fp16's; `clear_sumsq` as above).
//
// Epilogues:
//   kStore:       y[m, n] = round(sum).
//   kResidualAdd: residual[m, n] += round(sum), the fp32 residual stream [rows, out] (y unused);
//                 residual_sumsq[m] += the sum over n of the new residual[m, n]^2 (nullable;
//                 fixed point, the same bits whatever order the blocks add in);
//                 weighted_x[m, n] = round(weighted_x_norm[n] * the new residual[m, n])
//                 (nullable: the next projection's weighted x).
//   kSiluMul:     W's rows interleave gate and up in groups of 8 (rows 16 j .. 16 j + 7 are gate
//                 features 8 j .. 8 j + 7, the next 8 rows the up features), so each thread
//                 block holds a feature's gate and up: y[m, f] = round(silu(round(gate)) *
//                 round(up)), y is [rows, out / 2] and out a multiple of 16.
//   kRopeCache:   the fused QKV projection with W's rows in paired order, each head a group
//                 (paired_rows.h):
//                 what ops::rope_and_cache does to the stored product, done here (y unused):
//                 bias added, neox RoPE of q and k at rope.positions, q written to rope.q_out
//                 [rows, q_heads * head_dim] in feature order, k and v into rope.kv's pools at
//                 rope.slots (-1: skipped), the same values bit for bit. With rope.q_norm and
//                 rope.k_norm (Qwen3), each q and k head is RMS-normalized first: a head's
//                 blocks are launched as one cluster and add up its sums of squares through
//                 distributed shared memory, each block then finishing its own features.
enum class GemvEpilogue : uint8_t { kStore, kResidualAdd, kSiluMul, kRopeCache };

// What the kRopeCache epilogue needs: as ops::rope_and_cache's arguments.
struct GemvRopeCache {
  const void* bias = nullptr;  // nullable, [out] in paired order
  const int32_t* positions = nullptr;
  const int32_t* slots = nullptr;
  const float* inv_freq = nullptr;  // [head_dim / 2]
  void* q_out = nullptr;
  int32_t q_heads = 0;
  PagedKvCache kv;  // pools, layout, head count and size; dtype the projection's
  // The q/k norm (both set, or neither): weights [head_dim] each.
  const void* q_norm = nullptr;
  const void* k_norm = nullptr;
  float norm_eps = 0.f;
};

struct GemvFusion {
  const float* norm_residual = nullptr;
  const void* norm_weight = nullptr;
  const RowSumsq* norm_sumsq = nullptr;
  RowSumsq* clear_sumsq = nullptr;
  float eps = 0.f;
  GemvEpilogue epilogue = GemvEpilogue::kStore;
  float* residual = nullptr;
  RowSumsq* residual_sumsq = nullptr;
  void* weighted_x = nullptr;
  const void* weighted_x_norm = nullptr;
  GemvRopeCache rope;
  // Set: w holds E4M3 codes [out, in] (in a multiple of 16), W[n, k] = fp8_scale[n] x code
  // (fp8_per_channel) or fp8_scale[0] x code; the sum of x times the codes is scaled before the
  // epilogue, as gemv_fp8() scales it. 16-bit y only.
  const float* fp8_scale = nullptr;
  bool fp8_per_channel = false;
};

// True when gemv() can run this problem: 1 <= rows <= kGemvMaxRows, `in` a positive multiple
// of 8 (a row is read in 16-byte vectors; 16 with fusion.fp8_scale), out >= 1, and x and w 16-byte
// aligned; with `fusion`, its pointers set as its epilogue needs, out a multiple of 16 for
// kSiluMul, and for kRopeCache out = (q_heads + 2 kv heads) x head_dim with head_dim a multiple
// of 16 (64 or 128 with the q/k norm).
bool gemv_supports(int64_t rows, int64_t in, int64_t out, const void* x, const void* w,
                   const GemvFusion& fusion = {});

// y[rows, out] = x[rows, in] * w[out, in]^T, both row-major, x in `dtype`, w in `dtype` or E4M3
// codes (fusion.fp8_scale set); y in float32 when
// `f32_out`, else in `dtype` (rounded to nearest). Launches one kernel on `stream`: no
// allocation, no host synchronization (CUDA-graph capturable). Throws l2kv::Error before any
// launch when gemv_supports() is false, or when a kRopeCache epilogue's cache (rope.kv.dtype) is
// not in `dtype`. With `pdl` the kernel is launched with programmatic
// dependent launch: its blocks start while the kernel ahead (which writes x) finishes, and wait
// for that kernel before they read x or write y.
// `fusion` adds the prologue and epilogue described above (16-bit y only).
void gemv(DType dtype, const void* x, const void* w, void* y, bool f32_out, int64_t rows,
          int64_t in, int64_t out, cudaStream_t stream, bool pdl = false,
          const GemvFusion& fusion = {});

}  // namespace l2kv
