// Each row's sum of squares of the residual stream, as the fused decoder layer hands it from the
// kernel that writes the residual (ops::embed, the GEMV's residual epilogue) to the next RMSNorm
// (the GEMV's norm prologue or weighted x, ops::weighted_silu_mul). It is summed by atomic
// additions from every thread block of a projection; in float their order changed the last bits
// from run to run, and through the norm the tokens' logits. So it is kept in fixed point: 64 bits
// with kRowSumsqFractionBits bits of fraction, whose integer additions give the same bits in any
// order. Each addend (a thread's sum of two squares in a residual epilogue; ops::embed adds whole
// rows in float first) is rounded once to a step of 2^-20: over a row of 4,096 values the sum is
// typically off by about 1e-5 (at most 1e-3). That is far below a sum of squares of residual
// values of 1e-2 and more (4e-1 and more), but a row whose values all stay below about 5e-4 loses
// most of its addends; its scale rsqrt(sum / hidden + eps) then leans on eps. The range, 1.7e13,
// holds rows of 8,192 values of magnitude 4.6e4; beyond it the sum wraps.
#pragma once

#include <cmath>
#include <cstdint>

#include "l2kv/core/host_device.h"

namespace l2kv {

using RowSumsq = unsigned long long;
inline constexpr int kRowSumsqFractionBits = 20;

// The sum of squares a fixed-point value holds, rounded to float.
L2KV_HOST_DEVICE float row_sumsq_value(RowSumsq fixed) {
  return static_cast<float>(static_cast<double>(fixed) * 0x1p-20);
}

// A non-negative float sum of squares in fixed point, rounded to nearest.
L2KV_HOST_DEVICE RowSumsq to_row_sumsq(float sumsq) {
#if defined(__CUDA_ARCH__)
  return __double2ull_rn(static_cast<double>(sumsq) * 0x1p20);
#else
  return static_cast<RowSumsq>(std::nearbyint(static_cast<double>(sumsq) * 0x1p20));
#endif
}

static_assert(kRowSumsqFractionBits == 20, "row_sumsq_value and to_row_sumsq scale by 2^20");

}  // namespace l2kv
