// Decode GEMV on tensor cores. A thread block owns 16 output features (16 rows of W; 32, two
// tiles, for the staged norm prologue on matrices of 16,384 outputs or more, and at 9-16 rows
// where that fits the grid in one wave: then each warp multiplies both tiles with one load of x)
// and the whole `in` dimension; a tile's warps split `in` between them (warp w takes iterations
// w, w + kWarps, ...), each accumulating a 16 x (8 * kNTiles) tile of y^T with mma.m16n8k16, and
// the warps' tiles are summed through shared memory at the end. Every weight byte is read once, by
// one 16-byte streaming load; x (at most 16 rows) is re-read by every block through L1.
//
// Fragment trick: the order of k inside an mma is free as long as A and B use the same one.
// Lane (g, t) = (lane / 4, lane % 4) loads 8 consecutive k of W rows g and g + 8 and of x row
// g (one 16-byte vector each); those are exactly the k its A and B fragments of two
// m16n8k16 need: logical k {2t, 2t+1, 2t+8, 2t+9} of the first mma are physical k 8t + 0..3,
// of the second 8t + 4..7. The 4 lanes of a row read 64 contiguous bytes per load instruction
// (whole sectors); an iteration covers 64 * kUnroll contiguous bytes of each of the 16 rows.
// With E4M3 weights (kFp8) a 16-byte vector holds 16 k: widened, its halves are the A fragments
// of two such pairs of mma, against the lane's x vectors 2v and 2v + 1.
//
// Where the weights wait: up to 8 rows (kRing) each lane copies its own vectors with cp.async
// into a per-warp ring of two or three stages in shared memory and reads them back into
// fragments (no lane reads another's, so no barrier); at 9-16 rows they load straight into
// registers. The ring form sums the warps' tiles in the ring's memory once every warp is done.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <climits>
#include <string>
#include <type_traits>

#include "l2kv/core/ceil_div.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/core/per_device.h"
#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/fp8.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/gemv.h"
#include "l2kv/kernels/model/gemv_weight_loads.cuh"
#include "l2kv/kernels/model/head_norm.cuh"
#include "l2kv/kernels/model/paired_rows.h"
#include "l2kv/kernels/model/rope.cuh"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 8;  // split-K ways inside a block
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRowsPerBlock = 16;  // the mma's M: output features per block
constexpr int kColsPerTile = 8;    // the mma's N: rows of x per tile
constexpr int kElemsPerVec = 8;    // 16-bit elements per 16-byte load
constexpr int kLanesPerRow = gemv_loads::kLanesPerRow;
// Two blocks of 256 threads per SM caps registers at 128 per thread: room for 2 x 8 weight
// vectors in flight (NTiles = 1). The two-stage ring form asks for three (80 registers): its
// weights wait in shared memory, not in registers.
constexpr int kMinBlocksPerSm = 2;
constexpr int kMaxDevices = 16;  // devices whose shared-memory limit is tracked per kernel

template <int kNTiles, bool kRing, int kRingStages = 3, bool kFp8 = false, int kWarpMTiles = 1>
struct GemvTiling {
  // 16-byte loads per W row per lane per iteration; each lane has 2 * kUnroll weight loads
  // (rows g and g + 8) in flight. With two x tiles the x vectors take as many registers as
  // the weights, so fewer; with E4M3 weights each vector needs two x vectors, so fewer too
  // (8 spilled 360-540 bytes under the register form's norm prologue). The ring form keeps its
  // in-flight weights in shared memory: a stage of 4 vectors per row, three stages per warp
  // (96 KB per block, two blocks per SM) or two (64 KB, three blocks per SM). With two weight
  // tiles per warp (kWarpMTiles), 2 of each of its four rows: the same bytes in flight.
  static constexpr int kUnroll = kWarpMTiles > 1 ? 2 : kRing || kNTiles != 1 || kFp8 ? 4 : 8;
  static constexpr int kStages = kRing ? kRingStages : 0;
  static constexpr int kVecsPerIter = kLanesPerRow * kUnroll;  // of one row, per warp iteration
  static constexpr int kAccs = 4 * kNTiles;                    // fp32 accumulators per lane
  static constexpr int kStageVecs = 2 * kUnroll * kWarpSize;   // per warp and stage
  static constexpr int kSmemBytes = kWarps * kStages * kStageVecs * 16;
};

struct GemvParams {
  const void* x;
  const void* w;
  void* y;
  int64_t rows, in, out;
  bool pdl;  // launched with programmatic dependent launch
  GemvFusion fusion;
};

using gemv_loads::load_weights;
using gemv_loads::WeightVecs;

// The ring form's copies of one iteration into a stage (the lane's vectors at stage[i * 32 +
// lane], conflict-free): vectors at or past `lane_vecs` read nothing and land as zeros.
template <int kUnroll>
__device__ __forceinline__ void issue_stage(uint4* stage, const uint4* w_lo, const uint4* w_hi,
                                            int64_t first_vec, int64_t lane_vecs, int lane) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = first_vec + u * kLanesPerRow;
    const bool inside = v < lane_vecs;
    ptx::cp_async_16_stream(stage + (2 * u) * kWarpSize + lane, inside ? w_lo + v : w_lo,
                            inside ? 16u : 0u);
    ptx::cp_async_16_stream(stage + (2 * u + 1) * kWarpSize + lane, inside ? w_hi + v : w_hi,
                            inside ? 16u : 0u);
  }
}

template <int kUnroll>
__device__ __forceinline__ void read_stage(WeightVecs<kUnroll>& wv, const uint4* stage, int lane) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    wv.lo[u] = stage[(2 * u) * kWarpSize + lane];
    wv.hi[u] = stage[(2 * u + 1) * kWarpSize + lane];
  }
}

// Where a lane's x vectors come from: the 16-bit x rows in global memory (kGlobal) or in shared
// memory (kShared: the ring form's RMSNorm prologue normalizes x there once per block), or, for
// the register form's RMSNorm prologue, the fp32 residual rows scaled by each row's 1 / rms and
// the norm's weight in every iteration (kNormInline). Either norm rounds as ops::add_rmsnorm
// rounds. Pointers are at the lane's first x vector (t, or 2t with E4M3 weights); `v` counts x
// vectors from it.
enum class XFrom : uint8_t { kGlobal, kShared, kNormInline };

// x[k .. k + 7] of one row under RMSNorm: round(gamma * (residual * scale)).
template <typename T>
__device__ __forceinline__ uint4 normalized_vec(const float* residual, const uint4* gamma,
                                                float scale) {
  using Traits = tc::ElementTraits<T>;
  const float4* r = reinterpret_cast<const float4*>(residual);
  const float4 r0 = __ldg(r), r1 = __ldg(r + 1);
  const uint4 graw = __ldg(gamma);
  const T* gm = reinterpret_cast<const T*>(&graw);
  const float rv[kElemsPerVec] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
  uint4 out;
  T* o = reinterpret_cast<T*>(&out);
#pragma unroll
  for (int e = 0; e < kElemsPerVec; ++e)
    o[e] = Traits::from_float(Traits::to_float(gm[e]) * (rv[e] * scale));
  return out;
}

template <typename T, int kNTiles, XFrom kFrom>
struct XSource {
  const uint4* x[kNTiles];
  const float* residual[kNTiles];
  float scale[kNTiles];
  const uint4* gamma;

  __device__ __forceinline__ uint4 load(int nt, int64_t v) const {
    if constexpr (kFrom == XFrom::kGlobal)
      return __ldg(x[nt] + v);
    else if constexpr (kFrom == XFrom::kShared)
      return x[nt][v];
    else
      return normalized_vec<T>(residual[nt] + v * kElemsPerVec, gamma + v, scale[nt]);
  }
};

// x vectors per weight vector: a 16-byte vector holds 8 16-bit weights, or 16 E4M3 ones.
template <bool kFp8>
inline constexpr int kXVecsPerWeightVec = kFp8 ? 2 : 1;

// The matching x vectors of the iteration, then 2 * kUnroll * kNTiles mma per weight tile (twice
// that with fp8 weights: each E4M3 vector widens into two 16-bit ones, each the A fragments of two
// mma as a 16-bit vector is, against x vectors 2 v and 2 v + 1). With kWarpMTiles tiles a warp
// loads each x vector once for all of them: x's loads per weight byte fall by that factor.
template <typename T, int kNTiles, int kUnroll, bool kTail, XFrom kFrom, bool kFp8, int kWarpMTiles>
__device__ __forceinline__ void multiply(float (&acc)[kWarpMTiles][kNTiles][4],
                                         const WeightVecs<kUnroll> (&wv)[kWarpMTiles],
                                         const XSource<T, kNTiles, kFrom>& xs, int64_t first_vec,
                                         int64_t lane_vecs) {
  constexpr int kX = kXVecsPerWeightVec<kFp8>;
  uint4 b[kUnroll][kNTiles][kX];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t v = first_vec + u * kLanesPerRow;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int h = 0; h < kX; ++h)
        b[u][nt][h] = (!kTail || v < lane_vecs) ? xs.load(nt, kX * v + h) : make_uint4(0, 0, 0, 0);
  }
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
    for (int wt = 0; wt < kWarpMTiles; ++wt) {
      uint4 lo[kX], hi[kX];
      if constexpr (kFp8) {
        fp8::widen16<T>(wv[wt].lo[u], lo[0], lo[1]);
        fp8::widen16<T>(wv[wt].hi[u], hi[0], hi[1]);
      } else {
        lo[0] = wv[wt].lo[u];
        hi[0] = wv[wt].hi[u];
      }
#pragma unroll
      for (int h = 0; h < kX; ++h) {
        const uint32_t a0[4] = {lo[h].x, hi[h].x, lo[h].y, hi[h].y};
        const uint32_t a1[4] = {lo[h].z, hi[h].z, lo[h].w, hi[h].w};
#pragma unroll
        for (int nt = 0; nt < kNTiles; ++nt) {
          const uint32_t b0[2] = {b[u][nt][h].x, b[u][nt][h].y};
          const uint32_t b1[2] = {b[u][nt][h].z, b[u][nt][h].w};
          tc::mma_m16n8k16<T>(acc[wt][nt], a0, b0);
          tc::mma_m16n8k16<T>(acc[wt][nt], a1, b1);
        }
      }
    }
  }
}

// An fp8 weight row's scale (GemvFusion::fp8_scale); 0 past the last row, whose sums are dropped.
__device__ __forceinline__ float fp8_row_scale(const GemvFusion& f, int64_t n, int64_t out) {
  if (!f.fp8_per_channel) return f.fp8_scale[0];
  return n < out ? f.fp8_scale[n] : 0.f;
}

template <typename OutT>
__device__ __forceinline__ OutT to_output(float v) {
  if constexpr (std::is_same_v<OutT, float>)
    return v;
  else
    return tc::ElementTraits<OutT>::from_float(v);
}

// Which output a thread finishes in the epilogue, for its j-th slot (j = threadIdx.x + k *
// kThreads): feature tile `tile` of the block, x tile `nt`, and lane `l`'s pair of W rows n and
// n + 8 (the m16n8 C fragment's rows g and g + 8) of x row m.
struct EpilogueSlot {
  int tile, nt, c, l;
  int64_t n, m;
};

template <int kNTiles>
__device__ __forceinline__ EpilogueSlot epilogue_slot(int j, int64_t block_first_row) {
  constexpr int kSlots = kNTiles * 2 * kWarpSize;  // per feature tile
  EpilogueSlot e;
  e.tile = j / kSlots;
  e.nt = j % kSlots / (2 * kWarpSize);
  e.c = (j / kWarpSize) % 2;
  e.l = j % kWarpSize;
  e.n = block_first_row + e.tile * kRowsPerBlock + e.l / kLanesPerRow;
  e.m = e.nt * kColsPerTile + 2 * (e.l % kLanesPerRow) + e.c;
  return e;
}

// The kRopeCache epilogue of one thread: W rows n and n + 8 of x row m hold a head's features
// i and i + head_dim / 2 (paired_rows.h). The same operations as ops::rope_and_cache on the
// stored product: rounded to T, bias added, rotated and rounded (q, k) or rounded (v); E4M3 of
// value / scale into an fp8 cache. All that does not depend on the product (where the pair goes,
// the angle, bias and scale) is worked out before the weight loop, where it overlaps the
// weights' stream, instead of adding dependent loads at the block's end.
static_assert(kRowsPerBlock == kPairedRowsTile, "a GEMV tile is a tile of paired rows");

struct RopeLane {
  float sin = 0.f, cos = 0.f, bias_lo = 0.f, bias_hi = 0.f, inv_scale = 1.f;
  float gamma_lo = 1.f, gamma_hi = 1.f;  // the q/k norm's weights of the pair (kQkNorm)
  void* out = nullptr;  // feature i's element (q row or K/V cache slot); null: nothing stored
  int32_t half = 0;     // from feature i's element to feature i + head_dim / 2's
  bool rotate = false;  // q and k heads; v is stored as it is
  bool fp8 = false;     // an E4M3 cache
};

template <typename T, bool kQkNorm>
__device__ __forceinline__ RopeLane rope_lane(const GemvRopeCache& rc, int64_t m, int64_t n) {
  using Traits = tc::ElementTraits<T>;
  const PagedKvCache& kv = rc.kv;
  const int d = kv.head_dim;
  const int head = static_cast<int>(n / d);
  const int i = static_cast<int>(paired_feature(n % d));
  const bool is_q = head < rc.q_heads, is_k = !is_q && head < rc.q_heads + kv.num_kv_heads;
  RopeLane lane;
  lane.half = d / 2;
  lane.rotate = is_q || is_k;
  if (rc.bias != nullptr) {
    const T* bias = static_cast<const T*>(rc.bias);
    lane.bias_lo = Traits::to_float(bias[n]);
    lane.bias_hi = Traits::to_float(bias[n + kPairedRowsHalf]);
  }
  if (lane.rotate)
    sincosf(static_cast<float>(rc.positions[m]) * rc.inv_freq[i], &lane.sin, &lane.cos);
  if (kQkNorm && lane.rotate) {
    const T* gamma = static_cast<const T*>(is_q ? rc.q_norm : rc.k_norm);
    lane.gamma_lo = Traits::to_float(gamma[i]);
    lane.gamma_hi = Traits::to_float(gamma[i + d / 2]);
  }
  if (is_q) {
    lane.out = static_cast<T*>(rc.q_out) + (m * rc.q_heads + head) * d + i;
    return lane;
  }
  const int slot = rc.slots[m];  // -1: a pad row whose K/V is not kept
  if (slot < 0) return lane;
  const int kv_head = head - rc.q_heads - (is_k ? 0 : kv.num_kv_heads);
  const int64_t off = kv.offset(slot / kv.block_size, slot % kv.block_size, kv_head) + i;
  void* pool = is_k ? kv.k_pool : kv.v_pool;
  lane.fp8 = kv.fp8();
  if (lane.fp8) {
    lane.out = static_cast<uint8_t*>(pool) + off;
    lane.inv_scale = 1.f / (is_k ? kv.key_scale() : kv.value_scale());
  } else {
    lane.out = static_cast<T*>(pool) + off;
  }
  return lane;
}

// The pair's two stored elements (nothing where lane.out is null).
template <typename T>
__device__ __forceinline__ void store_pair(const RopeLane& lane, T ra, T rb) {
  using Traits = tc::ElementTraits<T>;
  if (lane.out == nullptr) return;
  if (lane.fp8) {
    uint8_t* out = static_cast<uint8_t*>(lane.out);
    out[0] = fp8::from_float(Traits::to_float(ra) * lane.inv_scale);
    out[lane.half] = fp8::from_float(Traits::to_float(rb) * lane.inv_scale);
  } else {
    T* out = static_cast<T*>(lane.out);
    out[0] = ra;
    out[lane.half] = rb;
  }
}

template <typename T>
__device__ __forceinline__ void rope_cache_pair(const RopeLane& lane, float lo, float hi) {
  using Traits = tc::ElementTraits<T>;
  if (lane.out == nullptr) return;
  const float a = Traits::to_float(Traits::from_float(lo)) + lane.bias_lo;
  const float b = Traits::to_float(Traits::from_float(hi)) + lane.bias_hi;
  T ra, rb;
  if (lane.rotate) {
    rotate_pair_by(a, b, lane.sin, lane.cos, ra, rb);
  } else {
    ra = Traits::from_float(a);
    rb = Traits::from_float(b);
  }
  store_pair<T>(lane, ra, rb);
}

// The epilogues the kernel is instantiated for: gemv.h's, and kRopeCache with the q/k norm
// (rope.q_norm set) as one of its own, so that the plain form's code stays as it was (a shared
// form slowed Llama-3-8B's batch-1 step by 3 % on an H100).
enum class Epilogue : uint8_t { kStore, kResidualAdd, kSiluMul, kRopeCache, kRopeCacheQkNorm };
template <Epilogue kEpilogue>
inline constexpr bool kRopeEpilogue =
    kEpilogue == Epilogue::kRopeCache || kEpilogue == Epilogue::kRopeCacheQkNorm;

// kMTiles groups of kWarpMTiles 16-feature tiles per block: each group's k is split between
// kWarps / kMTiles warps, and each of those warps multiplies every tile of its group (kWarpMTiles
// > 1: the register form only, so that one x load serves several tiles' weights).
// kFp8: W holds E4M3 codes (GemvFusion::fp8_scale), a 16-byte vector 16 k of a row.
template <typename T, typename OutT, int kNTiles, bool kNorm, Epilogue kEpilogue, bool kRing,
          int kMTiles, int kRingStages, int kMinBlocks, bool kFp8, int kWarpMTiles>
__global__ void __launch_bounds__(kThreads, kMinBlocks) gemv_kernel(GemvParams p) {
  // A kernel launched behind this one with programmatic dependent launch may start now; it
  // waits for this grid before reading its output.
  ptx::launch_dependents();
  using Tiling = GemvTiling<kNTiles, kRing, kRingStages, kFp8, kWarpMTiles>;
  constexpr int kUnroll = Tiling::kUnroll;
  static_assert(kWarpMTiles == 1 || !kRing, "several tiles per warp: the register form only");
  constexpr int kTiles = kMTiles * kWarpMTiles;  // 16-feature tiles per block
  constexpr int kWarpAccs = kWarpMTiles * Tiling::kAccs;
  extern __shared__ uint4 ring[];  // kRing: [warp][stage][Tiling::kStageVecs]
  // The warps' partial tiles: the ring form reuses its ring for them once every warp is done.
  __shared__ float partial_own[kRing ? 1 : kWarps * kWarpAccs * kWarpSize];
  float* partial_base = kRing ? reinterpret_cast<float*>(ring) : partial_own;
  static_assert(!kRing || kWarps * kWarpAccs * kWarpSize * sizeof(float) <= Tiling::kSmemBytes,
                "the partial sums fit in the ring (x_stage starts after it)");
  auto partial = [&](int w, int r, int l) -> float& {
    return partial_base[(w * kWarpAccs + r) * kWarpSize + l];
  };
  // The residual epilogue's sums of squares per x row (fixed point, row_sumsq.h), and a
  // weighted x's 1 / rms per row (never both in one launch).
  __shared__ RowSumsq row_sumsq[kGemvMaxRows];
  __shared__ float row_norm_scale[kGemvMaxRows];

  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int g = lane / kLanesPerRow, t = lane % kLanesPerRow;
  constexpr int kWarpsK = kWarps / kMTiles;
  const int mt = warp / kWarpsK, kw = warp % kWarpsK;  // the warp's tile and k share
  const int64_t block_first_row = int64_t{blockIdx.x} * kRowsPerBlock * kTiles;
  const int64_t first_row = block_first_row + mt * kWarpMTiles * kRowsPerBlock;
  constexpr int kX = kXVecsPerWeightVec<kFp8>;
  const int64_t vecs = p.in / (kElemsPerVec * kX);  // weight vectors per row
  const int64_t x_vecs = p.in / kElemsPerVec;
  const GemvFusion& f = p.fusion;
  // Rows past the end of W or x read the last row (valid memory); the mma keeps rows and
  // columns apart, and those results are never stored.
  const uint4* w = static_cast<const uint4*>(p.w);
  const uint4* w_lo[kWarpMTiles];
  const uint4* w_hi[kWarpMTiles];
#pragma unroll
  for (int wt = 0; wt < kWarpMTiles; ++wt) {
    const int64_t tile_row = first_row + wt * kRowsPerBlock;
    w_lo[wt] = w + min(tile_row + g, p.out - 1) * vecs + t;
    w_hi[wt] = w + min(tile_row + g + kRowsPerBlock / 2, p.out - 1) * vecs + t;
  }
  // The ring form normalizes x once per block into shared memory, after the ring.
  constexpr XFrom kFrom = !kNorm ? XFrom::kGlobal : kRing ? XFrom::kShared : XFrom::kNormInline;
  uint4* x_stage = ring + kWarps * Tiling::kStages * Tiling::kStageVecs;  // [rows][x_vecs]
  XSource<T, kNTiles, kFrom> xs;
  int64_t x_rows[kNTiles];
#pragma unroll
  for (int nt = 0; nt < kNTiles; ++nt) {
    x_rows[nt] = min(int64_t{nt * kColsPerTile + g}, p.rows - 1);
    // The lane's x vectors start at those of its first weight vector, t.
    if constexpr (kFrom == XFrom::kNormInline)
      xs.residual[nt] = f.norm_residual + x_rows[nt] * p.in + t * kX * kElemsPerVec;
    else if constexpr (kFrom == XFrom::kShared)
      xs.x[nt] = x_stage + x_rows[nt] * x_vecs + t * kX;
    else
      xs.x[nt] = static_cast<const uint4*>(p.x) + x_rows[nt] * x_vecs + t * kX;
  }
  if constexpr (kFrom == XFrom::kNormInline)
    xs.gamma = static_cast<const uint4*>(f.norm_weight) + t * kX;
  if constexpr (kEpilogue == Epilogue::kResidualAdd)
    if (threadIdx.x < kGemvMaxRows) row_sumsq[threadIdx.x] = 0;
  // Weighted x (gemv.h): x is round(norm weight x residual); each row's 1 / rms multiplies its
  // sums in the epilogue. Its sum of squares is loaded after the wait, used at the end.
  const bool weighted_x = !kNorm && f.norm_sumsq != nullptr;
  float weighted_sumsq = 0.f;
  // The residual epilogue's weighted x for the next projection: the norm weights of the one
  // output pair this thread finishes, loaded before the weight loop (weights, not inputs: no
  // wait needed).
  float next_norm_lo = 0.f, next_norm_hi = 0.f;
  // The residual epilogue's two residual values, loaded right after the wait (they are the
  // kernel ahead's output) so the block's end adds to registers instead of waiting for L2.
  float residual_lo = 0.f, residual_hi = 0.f;
  if constexpr (kEpilogue == Epilogue::kResidualAdd) {
    static_assert(kTiles * kNTiles * 2 * kWarpSize <= kThreads, "one pair per thread");
    const EpilogueSlot e = epilogue_slot<kNTiles>(static_cast<int>(threadIdx.x), block_first_row);
    if (f.weighted_x != nullptr && e.tile < kTiles) {
      const T* norm_weight = static_cast<const T*>(f.weighted_x_norm);
      if (e.n < p.out) next_norm_lo = tc::ElementTraits<T>::to_float(norm_weight[e.n]);
      if (e.n + kRowsPerBlock / 2 < p.out)
        next_norm_hi = tc::ElementTraits<T>::to_float(norm_weight[e.n + kRowsPerBlock / 2]);
    }
  }

  const int64_t full_iters = vecs / Tiling::kVecsPerIter;
  const bool has_tail = vecs % Tiling::kVecsPerIter != 0;
  RopeLane rope;  // kRopeCache only
  // kRopeCacheQkNorm: the thread's pair (biased and rounded products) and x row (-1: none), and
  // the block's per-row sums of squares of its pairs, then of each warp's 32 pairs (head_dim
  // <= 128: at most two warps a row).
  struct OwnPair {
    float a = 0.f, b = 0.f;
    int m = -1;
  } qk;
  constexpr int kPairsPerBlock = kRowsPerBlock / 2 * kTiles;
  constexpr int kMaxRows = kNTiles * kColsPerTile;
  __shared__ float qk_pair_sumsq[kEpilogue == Epilogue::kRopeCacheQkNorm ? kMaxRows : 1]
                                [kPairsPerBlock];
  __shared__ float qk_warp_sums[kEpilogue == Epilogue::kRopeCacheQkNorm ? kMaxRows : 1][2];
  // kRopeCache with the q/k norm: whether the block's head (a block lies in one head, and its
  // cluster is that head's blocks) is a q or k head, to be normalized before RoPE.
  bool normed = false;
  if constexpr (kEpilogue == Epilogue::kRopeCacheQkNorm) {
    const GemvRopeCache& rc = f.rope;
    normed = block_first_row / rc.kv.head_dim < rc.q_heads + rc.kv.num_kv_heads;
  }
  // With PDL the kernel ahead (which writes x, or the residual and its sums of squares) may
  // still run: wait for it before reading them.
  auto wait_for_inputs = [&] {
    if (p.pdl) ptx::grid_dependency_wait();
    if constexpr (kFrom == XFrom::kNormInline) {
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt)
        xs.scale[nt] = __frsqrt_rn(
            row_sumsq_value(f.norm_sumsq[x_rows[nt]]) / static_cast<float>(p.in) + f.eps);
    } else if constexpr (kFrom == XFrom::kShared) {
      const uint4* gamma = static_cast<const uint4*>(f.norm_weight);
      for (int64_t m = 0; m < p.rows; ++m) {
        const float scale =
            __frsqrt_rn(row_sumsq_value(f.norm_sumsq[m]) / static_cast<float>(p.in) + f.eps);
        for (int64_t v = threadIdx.x; v < x_vecs; v += kThreads)
          x_stage[m * x_vecs + v] =
              normalized_vec<T>(f.norm_residual + m * p.in + v * kElemsPerVec, gamma + v, scale);
      }
      __syncthreads();
    }
    if (weighted_x && threadIdx.x < p.rows)
      weighted_sumsq = row_sumsq_value(f.norm_sumsq[threadIdx.x]);
    if (kNorm || weighted_x)
      if (f.clear_sumsq != nullptr && blockIdx.x == 0 && threadIdx.x < kGemvMaxRows)
        f.clear_sumsq[threadIdx.x] = 0;
    if constexpr (kEpilogue == Epilogue::kResidualAdd) {
      const EpilogueSlot e = epilogue_slot<kNTiles>(static_cast<int>(threadIdx.x), block_first_row);
      if (e.tile < kTiles && e.m < p.rows) {
        if (e.n < p.out) residual_lo = f.residual[e.m * p.out + e.n];
        if (e.n + kRowsPerBlock / 2 < p.out)
          residual_hi = f.residual[e.m * p.out + e.n + kRowsPerBlock / 2];
      }
    }
    // The RoPE epilogue's inputs of the one output pair this thread finishes, read after the
    // wait like every input.
    if constexpr (kRopeEpilogue<kEpilogue>) {
      static_assert(kTiles * kNTiles * 2 * kWarpSize <= kThreads, "one pair per thread");
      const EpilogueSlot e = epilogue_slot<kNTiles>(static_cast<int>(threadIdx.x), block_first_row);
      if (e.tile < kTiles && e.m < p.rows && e.n < p.out)
        rope = rope_lane<T, kEpilogue == Epilogue::kRopeCacheQkNorm>(f.rope, e.m, e.n);
    }
  };
  float acc[kWarpMTiles][kNTiles][4] = {};
  WeightVecs<kUnroll> wv[kWarpMTiles];
  if constexpr (kRing) {
    // The warp's iterations are kw, kw + kWarpsK, ...; its stage s holds iteration j with
    // j % kStages == s. All stages are requested before the wait below (the weights do not
    // depend on the kernel ahead), then each consumed stage is refilled right after its mma, so
    // kStages - 1 to kStages iterations stay in flight without holding registers.
    constexpr int kStages = Tiling::kStages;
    const int64_t iters = full_iters + (has_tail ? 1 : 0);
    const int count = kw < iters ? static_cast<int>((iters - kw + kWarpsK - 1) / kWarpsK) : 0;
    uint4* stages = ring + static_cast<int64_t>(warp) * kStages * Tiling::kStageVecs;
    auto issue = [&](int j, int s) {
      if (j < count)
        issue_stage<kUnroll>(stages + s * Tiling::kStageVecs, w_lo[0], w_hi[0],
                             (kw + int64_t{j} * kWarpsK) * Tiling::kVecsPerIter, vecs - t, lane);
      ptx::cp_async_commit();  // empty groups too: wait_group counts stay uniform
    };
#pragma unroll
    for (int s = 0; s < kStages; ++s) issue(s, s);
    wait_for_inputs();
    int s = 0;
    for (int j = 0; j < count; ++j) {
      ptx::cp_async_wait<kStages - 1>();  // this lane's copies of iteration j have landed
      read_stage<kUnroll>(wv[0], stages + s * Tiling::kStageVecs, lane);
      const int64_t first_vec = (kw + int64_t{j} * kWarpsK) * Tiling::kVecsPerIter;
      if (kw + int64_t{j} * kWarpsK < full_iters)
        multiply<T, kNTiles, kUnroll, false, kFrom, kFp8>(acc, wv, xs, first_vec, vecs - t);
      else
        multiply<T, kNTiles, kUnroll, true, kFrom, kFp8>(acc, wv, xs, first_vec, vecs - t);
      // The mma above consumed the stage's registers, so its shared copy is free to refill.
      issue(j + kStages, s);
      if (++s == kStages) s = 0;
    }
  } else {
    // The weights do not depend on the kernel ahead: the warp's first iteration of them is in
    // flight before the wait below, so with PDL the blocks resident early (up to 64 KB each)
    // stream weights while that kernel drains.
    auto load = [&](auto tail, int64_t iter) {
#pragma unroll
      for (int wt = 0; wt < kWarpMTiles; ++wt)
        load_weights<kUnroll, decltype(tail)::value>(wv[wt], w_lo[wt], w_hi[wt],
                                                     iter * Tiling::kVecsPerIter, vecs - t);
    };
    int64_t it = kw;
    if (it < full_iters)
      load(std::false_type{}, it);
    else if (it == full_iters && has_tail)
      load(std::true_type{}, it);
    wait_for_inputs();
    for (; it < full_iters; it += kWarpsK) {
      if (it != kw) load(std::false_type{}, it);
      multiply<T, kNTiles, kUnroll, false, kFrom, kFp8>(acc, wv, xs, it * Tiling::kVecsPerIter,
                                                        vecs - t);
    }
    // The partial last iteration belongs to the warp whose turn it is.
    if (it == full_iters && has_tail) {
      if (it != kw) load(std::true_type{}, it);
      multiply<T, kNTiles, kUnroll, true, kFrom, kFp8>(acc, wv, xs, it * Tiling::kVecsPerIter,
                                                       vecs - t);
    }
  }

  // Sum the warps' tiles. Accumulator r of tile nt is the m16n8 C fragment's element
  // (g + 8 * (r / 2), 2t + r % 2): output feature first_row + g + 8 * (r / 2), x row
  // 8 nt + 2t + r % 2. One thread finishes the pair of features (g, g + 8) of one x row:
  // the pair a kSiluMul epilogue combines.
  if constexpr (kRing) {
    // The partial sums reuse the ring: every copy has landed (the groups still pending are
    // empty ones, so this wait costs nothing) and no warp reads its stages any more.
    ptx::cp_async_wait<0>();
    __syncthreads();
  }
#pragma unroll
  for (int wt = 0; wt < kWarpMTiles; ++wt)
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt)
#pragma unroll
      for (int r = 0; r < 4; ++r)
        partial(warp, wt * Tiling::kAccs + nt * 4 + r, lane) = acc[wt][nt][r];
  if (weighted_x && threadIdx.x < p.rows)
    row_norm_scale[threadIdx.x] = __frsqrt_rn(weighted_sumsq / static_cast<float>(p.in) + f.eps);
  __syncthreads();
  using Traits = tc::ElementTraits<T>;
  constexpr int kSlots = kNTiles * 2 * kWarpSize;  // per feature tile
  for (int j = static_cast<int>(threadIdx.x); j < kTiles * kSlots; j += kThreads) {
    const EpilogueSlot e = epilogue_slot<kNTiles>(j, block_first_row);
    float lo = 0.f, hi = 0.f;
    // Tile e.tile is tile e.tile % kWarpMTiles of the warps of group e.tile / kWarpMTiles.
    const int group = e.tile / kWarpMTiles;
    const int acc_lo = e.tile % kWarpMTiles * Tiling::kAccs + e.nt * 4 + e.c;
#pragma unroll
    for (int wp = group * kWarpsK; wp < (group + 1) * kWarpsK; ++wp) {
      lo += partial(wp, acc_lo, e.l);
      hi += partial(wp, acc_lo + 2, e.l);
    }
    const int64_t n = e.n, m = e.m;  // W rows n and n + 8, x row m
    if (m >= p.rows) continue;
    if constexpr (kFp8) {  // the product of the codes times the rows' scales, as gemv_fp8's
      lo *= fp8_row_scale(f, n, p.out);
      hi *= fp8_row_scale(f, n + kRowsPerBlock / 2, p.out);
    }
    if (weighted_x) {
      lo *= row_norm_scale[m];
      hi *= row_norm_scale[m];
    }
    if constexpr (kEpilogue == Epilogue::kStore) {
      OutT* y = static_cast<OutT*>(p.y);
      if (n < p.out) y[m * p.out + n] = to_output<OutT>(lo);
      if (n + kRowsPerBlock / 2 < p.out) y[m * p.out + n + kRowsPerBlock / 2] = to_output<OutT>(hi);
    } else if constexpr (kEpilogue == Epilogue::kSiluMul) {
      // out is a multiple of 16: every feature tile holds 8 whole (gate, up) pairs, or lies
      // wholly past the end of W.
      if (n >= p.out) continue;
      const float gate = Traits::to_float(Traits::from_float(lo));
      const float up = Traits::to_float(Traits::from_float(hi));
      const int64_t feature = paired_feature(n);  // gate_up is one group of paired rows
      static_cast<T*>(p.y)[m * (p.out / 2) + feature] =
          Traits::from_float(gate / (1.f + __expf(-gate)) * up);
    } else if constexpr (kRopeEpilogue<kEpilogue>) {
      if (n >= p.out) continue;
      if constexpr (kEpilogue == Epilogue::kRopeCacheQkNorm) {
        if (normed) {  // the head's sum of squares first: kept for the norm after the loop
          qk.a = Traits::to_float(
              Traits::from_float(Traits::to_float(Traits::from_float(lo)) + rope.bias_lo));
          qk.b = Traits::to_float(
              Traits::from_float(Traits::to_float(Traits::from_float(hi)) + rope.bias_hi));
          qk.m = static_cast<int>(m);
          // The block holds pairs [first, first + kPairsPerBlock) of its head.
          const int pair = static_cast<int>(paired_feature(n % f.rope.kv.head_dim));
          const int first = static_cast<int>(paired_feature(block_first_row % f.rope.kv.head_dim));
          qk_pair_sumsq[m][pair - first] = pair_sumsq(qk.a, qk.b);
          continue;
        }
      }
      rope_cache_pair<T>(rope, lo, hi);
    } else {
      float sumsq = 0.f;
      for (int half = 0; half < 2; ++half) {
        const int64_t col = n + half * (kRowsPerBlock / 2);
        if (col >= p.out) continue;
        // This thread's own pair (one pair per thread): the values loaded after the wait.
        const float r = (half == 0 ? residual_lo : residual_hi) +
                        Traits::to_float(Traits::from_float(half == 0 ? lo : hi));
        f.residual[m * p.out + col] = r;
        sumsq += r * r;
        if (f.weighted_x != nullptr)
          static_cast<T*>(f.weighted_x)[m * p.out + col] =
              Traits::from_float((half == 0 ? next_norm_lo : next_norm_hi) * r);
      }
      atomicAdd(&row_sumsq[m], to_row_sumsq(sumsq));  // integer: any order, the same bits
    }
  }
  if constexpr (kEpilogue == Epilogue::kResidualAdd) {
    __syncthreads();
    if (f.residual_sumsq != nullptr && threadIdx.x < p.rows)
      atomicAdd(&f.residual_sumsq[threadIdx.x], row_sumsq[threadIdx.x]);
  }
  if constexpr (kEpilogue == Epilogue::kRopeCacheQkNorm)
    if (normed) {  // the same for the whole cluster: one head
      // Each row's sum of squares over the head, as ops::rope_and_cache sums it: warp w adds
      // pairs 32 w .. 32 w + 31 (lane L pair 32 w + L, from the block that holds it), then the
      // warps' sums in order. Every block of the cluster sums every row for itself.
      namespace cg = cooperative_groups;
      cg::cluster_group cluster = cg::this_cluster();
      const int half = f.rope.kv.head_dim / 2;
      const int warps_per_row = half / kWarpSize;
      cluster.sync();  // every block's pair sums are in its shared memory
      for (int task = warp; task < p.rows * warps_per_row; task += kWarps) {
        const int m = task / warps_per_row, row_warp = task % warps_per_row;
        const int pair = row_warp * kWarpSize + lane;
        const float* held = cluster.map_shared_rank(&qk_pair_sumsq[m][pair % kPairsPerBlock],
                                                    static_cast<unsigned>(pair / kPairsPerBlock));
        const float sum = warp_sum_leading(*held, kWarpSize);
        if (lane == 0) qk_warp_sums[m][row_warp] = sum;
      }
      cluster.sync();  // no block leaves while another reads its sums; qk_warp_sums complete
      if (qk.m >= 0) {
        float total = 0.f;
        for (int row_warp = 0; row_warp < warps_per_row; ++row_warp)
          total += qk_warp_sums[qk.m][row_warp];
        const float scale = head_rms_scale(total, f.rope.kv.head_dim, f.rope.norm_eps);
        T ra, rb;
        rotate_pair_by(head_norm<T>(qk.a, scale, rope.gamma_lo),
                       head_norm<T>(qk.b, scale, rope.gamma_hi), rope.sin, rope.cos, ra, rb);
        store_pair<T>(rope, ra, rb);
      }
    }
}

template <typename T, typename OutT, bool kFp8, int kNTiles, bool kNorm, Epilogue kEpilogue,
          bool kRing, int kMTiles = 1, int kRingStages = 3, int kMinBlocks = kMinBlocksPerSm,
          int kWarpMTiles = 1>
void launch_tiles(const GemvParams& p, cudaStream_t stream) {
  using Tiling = GemvTiling<kNTiles, kRing, kRingStages, kFp8, kWarpMTiles>;
  auto* kernel = gemv_kernel<T, OutT, kNTiles, kNorm, kEpilogue, kRing, kMTiles, kRingStages,
                             kMinBlocks, kFp8, kWarpMTiles>;
  // The ring, and for its norm prologue the normalized x rows.
  const int64_t smem = Tiling::kSmemBytes + (kRing && kNorm ? p.rows * p.in * 2 : 0);
  if constexpr (kRing) {
    // Raised per device before the first launch that needs it (an eager warm-up precedes any
    // graph capture).
    static std::atomic<int64_t> allowed[kMaxDevices] = {};
    int device = 0;
    L2KV_CUDA_CHECK(cudaGetDevice(&device));
    if (device >= kMaxDevices || smem > allowed[device].load()) {
      L2KV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(smem)));
      if (device < kMaxDevices) allowed[device].store(smem);
    }
  }
  const int64_t features = int64_t{kRowsPerBlock} * kMTiles * kWarpMTiles;
  const auto blocks = static_cast<unsigned>((p.out + features - 1) / features);
  // The q/k norm's blocks of one head form a cluster (head_dim 64 or 128: at most 8 blocks).
  const auto cluster_blocks = kEpilogue == Epilogue::kRopeCacheQkNorm
                                  ? static_cast<unsigned>(p.fusion.rope.kv.head_dim / features)
                                  : 1u;
  cudaLaunchAttribute attributes[2];
  const cudaLaunchConfig_t config =
      launch_config(dim3(blocks), dim3(kThreads), static_cast<size_t>(smem), stream, p.pdl,
                    cluster_blocks, attributes);
  L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, p));
}

// Up to 8 rows the weights stream through the shared-memory ring, at 9-16 through registers.
// Measured on an H200 (bench/NOTES.md, "The GEMV's weights in a shared-memory ring"): in the
// decode step the ring is 1-2 % faster at 1-8 rows (it requests 96 KB per block before the PDL
// wait, against 64 KB), and 10 % slower at 16, where its 104 KB of shared memory per block
// leave too little L1 for the re-read x tiles.
// The ring form's norm prologue stages x in shared memory after the ring. Where x is small (up
// to 10 KB: one row of up to 5120 features) the ring has two stages and three blocks share an SM:
// the same 96 KB in flight per SM, but Llama-3-8B's QKV (384 blocks) runs in one wave instead
// of 1.45 and gate_up in 2.3 instead of 3.4 (NOTES, "Three blocks per SM for the norm-prologue
// GEMV": the batch-1 step 3 % faster). O and down, one wave at two blocks per SM, lose with it.
// Larger x keeps three stages and two blocks per SM while that fits; more rows or wider ones
// normalize x in every iteration of the register form instead. On large matrices (gate_up) such
// blocks cover two feature tiles (32 features), so that each normalization serves twice the
// weights; on QKV that leaves fewer blocks than SM slots.
constexpr int kThreeBlockRingStages = 2;
constexpr int kThreeBlocksPerSm = 3;
constexpr int64_t kSmemPerSm = 228 * 1024;       // sm_90
constexpr int64_t kSmemReservedPerBlock = 1024;  // by the CUDA runtime
constexpr int64_t kStaticSmemAllowance = 1024;   // the kernel's own __shared__ arrays
constexpr int64_t kThreeBlocksMaxBytes =         // ring + x per block: 74 KB
    kSmemPerSm / kThreeBlocksPerSm - kSmemReservedPerBlock - kStaticSmemAllowance;
constexpr int64_t kStagedNormMaxBytes = 108 * 1024;
constexpr int64_t kStagedNormWideMinOut = 16384;

// At 9-16 rows the register form runs blocks of 16 features, two per SM. Where that grid needs a
// second, partly filled wave but blocks of 32 (two tiles per warp, each x load serving both) fit
// in one, the wider blocks win: Llama-3-8B's QKV (6144 features) at 16 rows went from 0.79 to
// 0.86 of the ceiling on an H100. Where 16-feature blocks fit one wave already (O and down, 4096
// features), 32-feature ones leave half the slots empty and lose (0.90 -> 0.66; bench/NOTES.md,
// "The GEMV at 9-16 rows with two tiles per warp"). Every epilogue of a shape takes the same
// form, so fused and composed forms add in the same order.
bool two_tiles_per_warp(int64_t out) {
  const int64_t slots = int64_t{kMinBlocksPerSm} * current_device_sm_count();
  return ceil_div(out, int64_t{kRowsPerBlock}) > slots &&
         ceil_div(out, int64_t{2 * kRowsPerBlock}) <= slots;
}

template <typename T, typename OutT, bool kFp8, bool kNorm, Epilogue kEpilogue>
void launch(const GemvParams& p, cudaStream_t stream) {
  if (p.rows > kColsPerTile) {
    if constexpr (!kFp8)  // E4M3 weights keep one tile a warp: not measured in this form
      if (two_tiles_per_warp(p.out))
        return launch_tiles<T, OutT, kFp8, 2, kNorm, kEpilogue, false, 1, 3, kMinBlocksPerSm, 2>(
            p, stream);
    return launch_tiles<T, OutT, kFp8, 2, kNorm, kEpilogue, false>(p, stream);
  }
  if constexpr (!kNorm) {
    launch_tiles<T, OutT, kFp8, 1, kNorm, kEpilogue, true>(p, stream);
  } else {
    const int64_t x_bytes = p.rows * p.in * 2;
    const bool wide = p.out >= kStagedNormWideMinOut;
    if (GemvTiling<1, true, kThreeBlockRingStages>::kSmemBytes + x_bytes <= kThreeBlocksMaxBytes) {
      if (wide)
        return launch_tiles<T, OutT, kFp8, 1, kNorm, kEpilogue, true, 2, kThreeBlockRingStages,
                            kThreeBlocksPerSm>(p, stream);
      return launch_tiles<T, OutT, kFp8, 1, kNorm, kEpilogue, true, 1, kThreeBlockRingStages,
                          kThreeBlocksPerSm>(p, stream);
    }
    if (GemvTiling<1, true>::kSmemBytes + x_bytes > kStagedNormMaxBytes)
      return launch_tiles<T, OutT, kFp8, 1, kNorm, kEpilogue, false>(p, stream);
    if (wide) return launch_tiles<T, OutT, kFp8, 1, kNorm, kEpilogue, true, 2>(p, stream);
    launch_tiles<T, OutT, kFp8, 1, kNorm, kEpilogue, true>(p, stream);
  }
}

// The combinations the decoder uses: plain (16-bit or fp32 out), norm + store (QKV), residual
// add (O, down), SiLU with or without the norm (gate_up), RoPE + cache with or without the norm
// (QKV); with fp8 weights all but the fp32 output.
template <typename T, bool kFp8>
void launch_typed(const GemvParams& p, bool f32_out, cudaStream_t stream) {
  const bool norm = p.fusion.norm_residual != nullptr;
  switch (p.fusion.epilogue) {
    case GemvEpilogue::kStore:
      if constexpr (!kFp8)
        if (f32_out) return launch<T, float, false, false, Epilogue::kStore>(p, stream);
      if (norm)
        launch<T, T, kFp8, true, Epilogue::kStore>(p, stream);
      else
        launch<T, T, kFp8, false, Epilogue::kStore>(p, stream);
      break;
    case GemvEpilogue::kResidualAdd:
      launch<T, T, kFp8, false, Epilogue::kResidualAdd>(p, stream);
      break;
    case GemvEpilogue::kSiluMul:
      if (norm)
        launch<T, T, kFp8, true, Epilogue::kSiluMul>(p, stream);
      else
        launch<T, T, kFp8, false, Epilogue::kSiluMul>(p, stream);
      break;
    case GemvEpilogue::kRopeCache:
      if (p.fusion.rope.q_norm != nullptr) {
        if (norm)
          launch<T, T, kFp8, true, Epilogue::kRopeCacheQkNorm>(p, stream);
        else
          launch<T, T, kFp8, false, Epilogue::kRopeCacheQkNorm>(p, stream);
      } else if (norm) {
        launch<T, T, kFp8, true, Epilogue::kRopeCache>(p, stream);
      } else {
        launch<T, T, kFp8, false, Epilogue::kRopeCache>(p, stream);
      }
      break;
  }
}

bool aligned_16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

bool gemv_supports(int64_t rows, int64_t in, int64_t out, const void* x, const void* w,
                   const GemvFusion& fusion) {
  const bool norm = fusion.norm_residual != nullptr;
  const int64_t in_multiple = kElemsPerVec * (fusion.fp8_scale ? 2 : 1);
  if (!(rows >= 1 && rows <= kGemvMaxRows && in >= in_multiple && in % in_multiple == 0 &&
        out >= 1 && (out + kRowsPerBlock - 1) / kRowsPerBlock <= INT_MAX && aligned_16(w)))
    return false;
  if (norm) {
    if (!aligned_16(fusion.norm_residual) || !aligned_16(fusion.norm_weight) ||
        fusion.norm_sumsq == nullptr)
      return false;
  } else if (x == nullptr || !aligned_16(x)) {
    return false;
  }
  switch (fusion.epilogue) {
    case GemvEpilogue::kStore:
      return true;
    case GemvEpilogue::kResidualAdd:  // no decoder projection needs a norm and this epilogue
      return !norm && fusion.norm_sumsq == nullptr && fusion.residual != nullptr &&
             (fusion.weighted_x == nullptr) == (fusion.weighted_x_norm == nullptr);
    case GemvEpilogue::kSiluMul:
      return out % kRowsPerBlock == 0;
    case GemvEpilogue::kRopeCache: {
      const GemvRopeCache& r = fusion.rope;
      const PagedKvCache& kv = r.kv;
      // The q/k norm: a head's blocks (one or two 16-feature tiles each) form a cluster of at
      // most 8, and its pairs fill whole warps.
      const bool qk_norm = r.q_norm != nullptr || r.k_norm != nullptr;
      if (qk_norm &&
          (r.q_norm == nullptr || r.k_norm == nullptr || (kv.head_dim != 64 && kv.head_dim != 128)))
        return false;
      return kv.head_dim > 0 && kv.head_dim % kRowsPerBlock == 0 && r.q_heads > 0 &&
             kv.num_kv_heads > 0 && out == int64_t{r.q_heads + 2 * kv.num_kv_heads} * kv.head_dim &&
             r.positions != nullptr && r.slots != nullptr && r.inv_freq != nullptr &&
             r.q_out != nullptr && kv.k_pool != nullptr && kv.v_pool != nullptr &&
             kv.block_size > 0;
    }
  }
  return false;
}

void gemv(DType dtype, const void* x, const void* w, void* y, bool f32_out, int64_t rows,
          int64_t in, int64_t out, cudaStream_t stream, bool pdl, const GemvFusion& fusion) {
  const bool fused = fusion.norm_residual != nullptr || fusion.norm_sumsq != nullptr ||
                     fusion.epilogue != GemvEpilogue::kStore;
  const bool rope_dtype_ok =
      fusion.epilogue != GemvEpilogue::kRopeCache || fusion.rope.kv.dtype == dtype;
  const bool fp8 = fusion.fp8_scale != nullptr;
  if (!gemv_supports(rows, in, out, x, w, fusion) || ((fused || fp8) && f32_out) || !rope_dtype_ok)
    throw Error("gemv: unsupported problem rows=" + std::to_string(rows) +
                " in=" + std::to_string(in) + " out=" + std::to_string(out) +
                " (needs 1 <= rows <= 16, in a positive multiple of 8 (16 with fp8 weights), "
                "16-byte aligned x and w; fused forms and fp8 weights: 16-bit output, their "
                "pointers set, out a multiple of 16 for SiLU x up, for RoPE + cache the heads' "
                "rows and the cache in x's dtype)");
  const GemvParams p{x, w, y, rows, in, out, pdl, fusion};
  if (dtype == DType::kFloat16)
    fp8 ? launch_typed<__half, true>(p, f32_out, stream)
        : launch_typed<__half, false>(p, f32_out, stream);
  else
    fp8 ? launch_typed<__nv_bfloat16, true>(p, f32_out, stream)
        : launch_typed<__nv_bfloat16, false>(p, f32_out, stream);
}

}  // namespace l2kv
