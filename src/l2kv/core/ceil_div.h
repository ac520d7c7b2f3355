// Whole units of `b` that hold `a` (a >= 0, b > 0), as the int32 counts of blocks, tiles and
// slices that kernels and plans take.
#pragma once

#include <cstdint>

namespace l2kv {

inline int32_t ceil_div(int64_t a, int64_t b) {
  return static_cast<int32_t>((a + b - 1) / b);
}

}  // namespace l2kv
