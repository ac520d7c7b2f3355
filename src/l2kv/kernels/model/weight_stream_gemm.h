// The decode projection on Hopper: y[rows, out] = x[rows, in] * W[out, in]^T for 1 to 128 rows,
// 16-bit operands (bf16 or fp16), fp32 accumulation, y in the operands' type or in float32.
// At these row counts a projection is a read of W; the kernel is built to stream W at the
// HBM read ceiling:
// - "Swap AB": output features are the MMA's M (64 per warpgroup, 128 per tile) and x's rows
//   its N (rows rounded up to a bucket of 8, 16, 32, 64 or 128), so one row costs no more
//   tensor-core work per weight byte than 128 do.
// - W and x tiles [64 c x 64] and [N x 64] are TMA 2D loads (128-byte swizzle) into a ring of
//   shared-memory stages guarded by full/empty mbarriers: one producer thread keeps 4-12
//   stages (~130-200 KB per SM) in flight; c consumer warpgroups run wgmma on them (c = 2 up
//   to 16 rows, 4 above, so that x's re-reads from L2 stay well below W's bytes).
// - Stream-K: the (tile, 64-wide k chunk) iterations are cut into one equal contiguous range
//   per SM, so every shape fills the machine; a tile split between blocks is summed in a
//   fixed block order (deterministic) by the block that finishes it last.
// - Programmatic dependent launch: the weights of the first stages are requested before
//   griddepcontrol.wait (they do not depend on the kernel ahead), x and y only after it.
// Tensor maps are built on the host once per (pointer, shape) and cached; the partial-sum
// workspace is allocated once by the constructor, so run() allocates nothing and is
// CUDA-graph capturable. One object per stream: calls on two streams at once would share the
// workspace.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

#include "l2kv/core/dtype.h"
#include "l2kv/kernels/attention/prefetch_policy.h"

namespace l2kv {

class WeightStreamGemm {
 public:
  // Rows of x one call takes.
  static constexpr int64_t kMaxRows = 128;
  // Output tiles of one call (128 features each at up to 16 rows, 256 above):
  // out <= kMaxTiles * 128 (16.7 M features).
  static constexpr int64_t kMaxTiles = 131072;
  static constexpr int64_t kMaxFeaturesPerTile = 128;
  // Columns of x and W (keeps a block's iteration count in 32 bits).
  static constexpr int64_t kMaxIn = int64_t{1} << 20;

  // Allocates the workspace for the current device (its SM count sets the grid).
  WeightStreamGemm();
  ~WeightStreamGemm();
  WeightStreamGemm(const WeightStreamGemm&) = delete;
  WeightStreamGemm& operator=(const WeightStreamGemm&) = delete;

  // True when run() takes this problem: 1 <= rows <= kMaxRows, `in` a multiple of 8 (TMA
  // needs 16-byte row strides) in [8, kMaxIn], 1 <= out <= kMaxTiles * 128, x and w 16-byte
  // aligned.
  static bool supports(int64_t rows, int64_t in, int64_t out, const void* x, const void* w);

  // y[rows, out] = x[rows, in] * w[out, in]^T, x and w row-major in `dtype`; y row-major in
  // float32 when `f32_out`, else in `dtype` (rounded to nearest). One kernel launch on
  // `stream`, no allocation, no host synchronization; throws l2kv::Error before any launch
  // when supports() is false. With `pdl` the launch uses programmatic dependent launch (the
  // kernel waits for the one ahead before it reads x or writes y).
  void run(DType dtype, const void* x, const void* w, void* y, bool f32_out, int64_t rows,
           int64_t in, int64_t out, cudaStream_t stream, bool pdl = false);

  // L2 policy for the streamed weights (read once per call): evict-first by default, so they
  // do not push x, the partial sums or the next kernel's data out of the L2.
  void set_weight_l2_hint(L2EvictionHint hint) { weight_hint_ = hint; }
  L2EvictionHint weight_l2_hint() const { return weight_hint_; }

  // Tensor maps cached so far (one per distinct x or W operand).
  size_t cached_tensor_maps() const { return maps_.size(); }

 private:
  struct TensorMap;  // a CUtensorMap, kept out of this header
  // dtype, pointer, rows of the tensor, columns (in), box rows
  using MapKey = std::tuple<int, const void*, int64_t, int64_t, int>;
  const TensorMap& map_for(DType dtype, const void* base, int64_t rows, int64_t in, int box_rows);

  int sm_count_ = 0;
  L2EvictionHint weight_hint_ = L2EvictionHint::kEvictFirst;
  float* partials_ = nullptr;     // per block: 2 tile slots x 2 warpgroups x 64 x 128 floats
  uint32_t* counters_ = nullptr;  // per (tile, warpgroup): k chunks summed so far, reset to 0
  std::map<MapKey, std::unique_ptr<TensorMap>> maps_;
};

}  // namespace l2kv
