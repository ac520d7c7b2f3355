// The decode projection on Hopper: y[rows, out] = x[rows, in] * W[out, in]^T for 1 to 128 rows,
// 16-bit operands (bf16 or fp16), fp32 accumulation, y in the operands' type or in float32.
// At these row counts a projection is a read of W; the kernel is built to stream W at the
// HBM read ceiling:
// - "Swap AB": output features are the MMA's M and x's rows its N (rows rounded up to a bucket
//   of 8, 16, 32, 64 or 128), so one row costs no more tensor-core work per weight byte than
//   128 do. A tile is 128 features (256 above 64 rows, so x's re-reads from L2 stay at most
//   half of W's bytes), two consumer warpgroups.
// - W and x tiles [tile x 64] and [N x 64] are TMA 2D loads (128-byte swizzle) into a ring of
//   shared-memory stages guarded by full/empty mbarriers: one producer thread keeps 4-8
//   stages (64-128 KB of weights per block) in flight; the consumers' wgmma of one stage runs
//   while they wait for the next.
// - Split k inside a cluster: a tile's k is cut between the 1-8 blocks of one cluster, as many
//   as let every tile run in a single wave (two blocks per SM up to 64 rows); the blocks sum
//   their partial tiles through distributed shared memory in a fixed order (deterministic).
//   No global workspace, so calls on different streams may overlap.
// - Programmatic dependent launch: the weights of the first stages are requested before
//   griddepcontrol.wait (they do not depend on the kernel ahead), x and y only after it.
// Tensor maps are built on the host once per (pointer, shape) and cached, so run() allocates
// nothing and is CUDA-graph capturable.
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
  // Output features of one call.
  static constexpr int64_t kMaxOut = int64_t{1} << 24;
  // Blocks one tile's k may be split between (a portable cluster size).
  static constexpr int kMaxSplits = 8;
  // Columns of x and W (keeps a block's iteration count in 32 bits).
  static constexpr int64_t kMaxIn = int64_t{1} << 20;

  // Sets up the kernels for the current device and asks it how many clusters of each size fit
  // at once (that sets the split counts).
  WeightStreamGemm();
  ~WeightStreamGemm();
  WeightStreamGemm(const WeightStreamGemm&) = delete;
  WeightStreamGemm& operator=(const WeightStreamGemm&) = delete;

  // True when run() takes this problem: 1 <= rows <= kMaxRows, `in` a multiple of 8 (TMA
  // needs 16-byte row strides) in [8, kMaxIn], 1 <= out <= kMaxOut, x and w 16-byte aligned.
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

  // Blocks per tile: 0 (the default) chooses per shape, 1..kMaxSplits forces that count where
  // the k chunks allow it (for benchmarks and tests); throws l2kv::Error outside [0, 8].
  void set_splits(int splits);
  // The split count run() uses for this shape.
  int splits_for(int64_t rows, int64_t in, int64_t out) const;

  // Tensor maps cached so far (one per distinct x or W operand).
  size_t cached_tensor_maps() const { return maps_.size(); }

 private:
  struct TensorMap;  // a CUtensorMap, kept out of this header
  // dtype, pointer, rows of the tensor, columns (in), box rows
  using MapKey = std::tuple<int, const void*, int64_t, int64_t, int>;
  const TensorMap& map_for(DType dtype, const void* base, int64_t rows, int64_t in, int box_rows);

  static constexpr int kBuckets = 5;  // N = 8, 16, 32, 64, 128
  L2EvictionHint weight_hint_ = L2EvictionHint::kEvictFirst;
  int forced_splits_ = 0;
  int resident_tiles_[kBuckets][kMaxSplits] = {};  // clusters that fit at once, per bucket
  std::map<MapKey, std::unique_ptr<TensorMap>> maps_;
};

}  // namespace l2kv
