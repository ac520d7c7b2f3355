// The row order the CUDA backend stores two projections in, so that one GEMV thread, which
// finishes rows n and n + 8 of a 16-row tile, holds both features an epilogue combines: each
// group of `group` rows (an even count, a multiple of 16) is reordered so that its features f and
// f + group / 2 lie 8 rows apart: rows 16 j .. 16 j + 7 hold features 8 j .. 8 j + 7 and rows
// 16 j + 8 .. 16 j + 15 features group / 2 + 8 j .. + 7.
//   QKV: each head is a group (head_dim rows), and f, f + head_dim / 2 is the pair neox RoPE
//        rotates (gemv.h's kRopeCache); biases and fp8 row scales follow their rows.
//   gate_up: [gate | up] is one group (2 x intermediate rows), and f, f + intermediate is a
//        feature's gate and up (gemv.h's kSiluMul).
// The projections' outputs are then in this order too; ops::rope_and_cache and ops::gated_mul
// read it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/core/host_device.h"

namespace l2kv {

inline constexpr int32_t kPairedRowsTile = 16;  // the GEMV's rows per tile
inline constexpr int32_t kPairedRowsHalf = kPairedRowsTile / 2;

// The row within its group that holds feature `feature` (0 .. group - 1) of the group.
L2KV_HOST_DEVICE int64_t paired_row(int64_t feature, int64_t group) {
  const int64_t half = group / 2;
  const int64_t second = feature >= half ? 1 : 0;
  const int64_t i = feature - second * half;
  return i / kPairedRowsHalf * kPairedRowsTile + second * kPairedRowsHalf + i % kPairedRowsHalf;
}

// The inverse for a tile's first half: the feature i (< group / 2) that row `row` (with
// row % 16 < 8) holds; row + 8 holds feature i + group / 2.
L2KV_HOST_DEVICE int64_t paired_feature(int64_t row) {
  return row / kPairedRowsTile * kPairedRowsHalf + row % kPairedRowsHalf;
}

// `rows` (groups of `group` rows of `width` elements each, in feature order) in paired order.
// Host only: weights, biases and scales at load. Throws l2kv::Error unless group is a positive
// multiple of 16 that divides the rows.
template <typename T>
std::vector<T> to_paired_rows(const std::vector<T>& rows, int64_t group, int64_t width) {
  const auto count = static_cast<int64_t>(rows.size()) / width;
  if (group <= 0 || group % kPairedRowsTile != 0 || width <= 0 ||
      static_cast<int64_t>(rows.size()) % width != 0 || count % group != 0)
    throw Error("paired rows: groups of " + std::to_string(group) +
                " rows (a multiple of 16) do not tile " + std::to_string(count) + " rows");
  std::vector<T> out(rows.size());
  for (int64_t g = 0; g < count / group; ++g)
    for (int64_t f = 0; f < group; ++f) {
      const int64_t from = (g * group + f) * width, to = (g * group + paired_row(f, group)) * width;
      for (int64_t k = 0; k < width; ++k) out[to + k] = rows[from + k];
    }
  return out;
}

}  // namespace l2kv
