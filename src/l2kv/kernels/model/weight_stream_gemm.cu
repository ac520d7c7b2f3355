// The Hopper decode projection (weight_stream_gemm.h): a TMA -> shared-memory ring -> wgmma
// pipeline with one producer thread and two consumer warpgroups, k split inside a cluster.
//
// Block layout: warps 0-7 are the consumer warpgroups (warpgroup g computes output features
// [64 (g kMTiles + m), +64) of the block's tile for m < kMTiles), warp 8 is the producer, of
// which one lane issues every TMA load. A stage holds W[kTileM x 64] and x[N x 64], both
// K-major with 128-byte swizzle, as wgmma wants them; full[s] completes when the stage's bytes
// have landed (transaction count), empty[s] when all consumer warps are done with it.
//
// Split k: a tile's 64-wide k chunks are cut into `splits` contiguous ranges, one per block of
// a cluster (cluster rank = split). Each block accumulates its range in registers; with more
// than one split the blocks put their partial tiles in their own (drained) rings, and after a
// cluster barrier each block sums one slice of the tile over all blocks' rings, always in rank
// order (deterministic), and writes it to y. Nothing goes through global memory but W, x and y.
#include <cooperative_groups.h>
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/cache_hints.cuh"
#include "l2kv/kernels/grid_dependency.cuh"
#include "l2kv/kernels/model/weight_stream_gemm.h"
#include "l2kv/kernels/sm90_tma_wgmma.cuh"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {

struct WeightStreamGemm::TensorMap {
  CUtensorMap map;
};

namespace {

namespace cg = cooperative_groups;

constexpr int kWarpSize = 32;
constexpr int kWarpgroupThreads = 128;
constexpr int kWarpgroupM = 64;  // wgmma's M: output features per warpgroup MMA
constexpr int kConsumers = 2;
constexpr int kConsumerThreads = kConsumers * kWarpgroupThreads;
constexpr int kConsumerWarps = kConsumerThreads / kWarpSize;
constexpr int kThreads = kConsumerThreads + kWarpSize;  // + the producer warp
constexpr int kProducerWarp = kConsumerWarps;
constexpr int kElemBytes = 2;
constexpr int kChunkK = 128 / kElemBytes;  // one 128-byte swizzle row of k per stage
constexpr int kK16PerChunk = kChunkK / 16;
constexpr int kK16Bytes = 16 * kElemBytes;
constexpr int kSwizzleAlign = 1024;  // 128-byte swizzle repeats every 8 rows
constexpr int kMaxStages = 8;

template <int N>
struct Tiling {
  static_assert(N % 8 == 0 && N >= 8 && N <= WeightStreamGemm::kMaxRows);
  // Every tile re-reads x from L2, so x's L2 traffic is N / kTileM of W's: 256 features per
  // tile above 64 rows keep it at half, 128 below.
  static constexpr int kMTiles = N > 64 ? 2 : 1;  // m64 tiles per consumer warpgroup
  static constexpr int kTileM = kWarpgroupM * kConsumers * kMTiles;
  // Two blocks per SM where the accumulators allow it (more blocks in flight, and a tile
  // count that fills the machine more evenly); one above 64 rows (128 accumulators a thread).
  static constexpr int kBlocksPerSm = N > 64 ? 1 : 2;
  static constexpr int kWBytes = kTileM * kChunkK * kElemBytes;
  static constexpr int kXBytes = N * kChunkK * kElemBytes;
  static constexpr int kStageBytes = kWBytes + kXBytes;
  static_assert(kWBytes % kSwizzleAlign == 0 && kXBytes % kSwizzleAlign == 0);
  // 100 KB of stages per block (two per SM) or 200 KB (one): 64-128 KB of weights in flight
  // per block covers HBM latency at the read ceiling.
  static constexpr int kStageBudgetBytes = (kBlocksPerSm == 1 ? 200 : 100) * 1024;
  static constexpr int kStages =
      kStageBudgetBytes / kStageBytes < kMaxStages ? kStageBudgetBytes / kStageBytes : kMaxStages;
  static_assert(kStages >= 2);
  static constexpr int kAccs = N / 2;  // fp32 accumulators per consumer thread and m64 tile
  // The partial tile (fp32, accumulator order) must fit the drained ring.
  static_assert(kTileM * N * 4 <= kStages * kStageBytes);
  static constexpr int kBarrierBytes = 2 * kStages * static_cast<int>(sizeof(uint64_t));
  static constexpr int kSmemBytes = kSwizzleAlign + kStages * kStageBytes + kBarrierBytes;
};

int tile_features(int n) {
  return n > 64 ? Tiling<128>::kTileM : Tiling<64>::kTileM;
}

struct Params {
  CUtensorMap w_map;  // W [out x in], box [kTileM x 64]; features past `out` arrive as zeros
  CUtensorMap x_map;  // x [rows x in], box [N x 64]; rows past `rows` arrive as zeros
  void* y;
  int64_t rows, out;
  int k_chunks;  // ceil(in / 64); the last chunk's missing k arrive as zeros
  int splits;    // blocks per tile = cluster size
  L2EvictionHint w_hint;
};

template <typename OutT>
__device__ __forceinline__ OutT to_output(float v) {
  if constexpr (std::is_same_v<OutT, float>)
    return v;
  else
    return tc::ElementTraits<OutT>::from_float(v);
}

// Feature (M) and row (N) offsets of accumulator r of warpgroup thread t inside its m64 tile:
// d[4j + q] = element (16 (t / 32) + (t % 32) / 4 + 8 (q / 2), 8j + 2 (t % 4) + q % 2).
__device__ __forceinline__ int acc_feature(int r, int t) {
  return 16 * (t / kWarpSize) + (t % kWarpSize) / 4 + 8 * ((r % 4) / 2);
}
__device__ __forceinline__ int acc_row(int r, int t) {
  return 8 * (r / 4) + 2 * (t % 4) + r % 2;
}

template <typename T, typename OutT, int N>
__global__ void __launch_bounds__(kThreads, Tiling<N>::kBlocksPerSm)
    weight_stream_kernel(const __grid_constant__ Params p) {
  using Tiling = Tiling<N>;
  constexpr int kStages = Tiling::kStages;
  constexpr int kMTiles = Tiling::kMTiles;
  constexpr int kTileM = Tiling::kTileM;
  constexpr int kAccs = Tiling::kAccs;
  // The kernel behind this one (launched with PDL) may start; it waits for this grid before
  // it reads y.
  ptx::launch_dependents();

  extern __shared__ uint8_t smem_raw[];
  uint8_t* smem = reinterpret_cast<uint8_t*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + kSwizzleAlign - 1) & ~uintptr_t{kSwizzleAlign - 1});
  auto stage_w = [&](int s) { return smem + s * Tiling::kStageBytes; };
  auto stage_x = [&](int s) { return smem + s * Tiling::kStageBytes + Tiling::kWBytes; };
  uint64_t* full = reinterpret_cast<uint64_t*>(smem + kStages * Tiling::kStageBytes);
  uint64_t* empty = full + kStages;

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      ptx::mbarrier_init(&full[s], 1);
      ptx::mbarrier_init(&empty[s], kConsumerWarps);
    }
    ptx::mbarrier_init_fence();
  }
  __syncthreads();

  // Cluster rank = split; clusters are consecutive blocks along x.
  const int split = p.splits > 1 ? static_cast<int>(cg::this_cluster().block_rank()) : 0;
  const int tile = static_cast<int>(blockIdx.x) / p.splits;
  const int chunk_begin = static_cast<int>(int64_t{split} * p.k_chunks / p.splits);
  const int chunk_end = static_cast<int>(int64_t{split + 1} * p.k_chunks / p.splits);
  const int count = chunk_end - chunk_begin;

  float acc[kMTiles][kAccs];
#pragma unroll
  for (int m = 0; m < kMTiles; ++m)
#pragma unroll
    for (int r = 0; r < kAccs; ++r) acc[m][r] = 0.f;
  const int wg = warp / 4;
  const int t = static_cast<int>(threadIdx.x) % kWarpgroupThreads;

  if (warp == kProducerWarp) {
    if (lane == 0) {
      const uint64_t w_policy = ptx::make_l2_policy(p.w_hint);                    // read once
      const uint64_t x_policy = ptx::make_l2_policy(L2EvictionHint::kEvictLast);  // every tile
      const int early = count < kStages ? count : kStages;
      // The first stages' weights do not depend on the kernel ahead: request them before the
      // wait, x after it.
      for (int i = 0; i < early; ++i) {
        ptx::mbarrier_arrive_expect_tx(&full[i], Tiling::kStageBytes);
        ptx::tma_load_2d(stage_w(i), &p.w_map, &full[i], (chunk_begin + i) * kChunkK, tile * kTileM,
                         w_policy);
      }
      ptx::grid_dependency_wait();
      for (int i = 0; i < early; ++i)
        ptx::tma_load_2d(stage_x(i), &p.x_map, &full[i], (chunk_begin + i) * kChunkK, 0, x_policy);
      int s = early % kStages;
      uint32_t parity = early == kStages ? 0 : 1;  // of the consumers' release to wait for
      for (int i = early; i < count; ++i) {
        ptx::mbarrier_wait(&empty[s], parity);
        ptx::mbarrier_arrive_expect_tx(&full[s], Tiling::kStageBytes);
        const int k = (chunk_begin + i) * kChunkK;
        ptx::tma_load_2d(stage_w(s), &p.w_map, &full[s], k, tile * kTileM, w_policy);
        ptx::tma_load_2d(stage_x(s), &p.x_map, &full[s], k, 0, x_policy);
        if (++s == kStages) s = 0, parity ^= 1;
      }
    }
  } else {
    // Consumers. y may still be read by the kernel ahead: wait for it.
    ptx::grid_dependency_wait();
    int s = 0, previous = 0;
    uint32_t parity = 0;
    for (int i = 0; i < count; ++i) {
      ptx::mbarrier_wait(&full[s], parity);
      ptx::wgmma_fence();
      const uint8_t* b = stage_x(s);
#pragma unroll
      for (int m = 0; m < kMTiles; ++m) {
        const uint8_t* a = stage_w(s) + (wg * kMTiles + m) * kWarpgroupM * kChunkK * kElemBytes;
#pragma unroll
        for (int kk = 0; kk < kK16PerChunk; ++kk)
          ptx::wgmma_m64k16<N, T>(acc[m], ptx::wgmma_descriptor_k_major_sw128(a + kk * kK16Bytes),
                                  ptx::wgmma_descriptor_k_major_sw128(b + kk * kK16Bytes), true);
      }
      ptx::wgmma_commit();
      // Keep this stage's MMAs running; the one before is done once at most one group is.
      ptx::wgmma_wait<1>();
      if (i > 0 && lane == 0) ptx::mbarrier_arrive(&empty[previous]);
      previous = s;
      if (++s == kStages) s = 0, parity ^= 1;
    }
    ptx::wgmma_wait<0>();
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int r = 0; r < kAccs; ++r) ptx::wgmma_fence_operand(acc[m][r]);
  }

  OutT* y = static_cast<OutT*>(p.y);
  const int64_t tile_feature = int64_t{tile} * kTileM;
  if (p.splits == 1) {
    if (warp == kProducerWarp) return;
#pragma unroll
    for (int m = 0; m < kMTiles; ++m) {
      const int64_t first = tile_feature + (wg * kMTiles + m) * kWarpgroupM;
#pragma unroll
      for (int r = 0; r < kAccs; ++r) {
        const int64_t n = first + acc_feature(r, t);
        const int64_t row = acc_row(r, t);
        if (n < p.out && row < p.rows) y[row * p.out + n] = to_output<OutT>(acc[m][r]);
      }
    }
    return;
  }

  // Several splits: every TMA load this block issued has landed (the consumers waited for all
  // of them) and every MMA reading the ring has finished, so the ring takes the partial tile,
  // in accumulator order: element ((wg kMTiles + m) kAccs + r) 128 + t.
  cg::cluster_group cluster = cg::this_cluster();
  float* partial = reinterpret_cast<float*>(smem);
  __syncthreads();  // both warpgroups are done with the ring
  if (warp != kProducerWarp) {
#pragma unroll
    for (int m = 0; m < kMTiles; ++m)
#pragma unroll
      for (int r = 0; r < kAccs; ++r)
        partial[((wg * kMTiles + m) * kAccs + r) * kWarpgroupThreads + t] = acc[m][r];
  }
  cluster.sync();  // every block's partial is written and visible to the cluster
  constexpr int kElements = kTileM * N;
  const int begin = split * kElements / p.splits, end = (split + 1) * kElements / p.splits;
  for (int e = begin + static_cast<int>(threadIdx.x); e < end; e += kThreads) {
    const int et = e % kWarpgroupThreads;
    const int er = (e / kWarpgroupThreads) % kAccs;
    const int m_tile = e / (kWarpgroupThreads * kAccs);
    const int64_t n = tile_feature + m_tile * kWarpgroupM + acc_feature(er, et);
    const int64_t row = acc_row(er, et);
    if (n >= p.out || row >= p.rows) continue;
    float sum = 0.f;
    for (int b = 0; b < p.splits; ++b) sum += cluster.map_shared_rank(partial, b)[e];
    y[row * p.out + n] = to_output<OutT>(sum);
  }
  cluster.sync();  // no block leaves while another still reads its ring
}

int bucket(int64_t rows) {
  for (int n = 8;; n *= 2)
    if (rows <= n) return n;
}

// The launch configuration of one call: PDL when asked, a cluster of `splits` blocks when k
// is split. `attributes` must outlive the launch.
template <int N>
cudaLaunchConfig_t make_config(int tiles, int splits, cudaStream_t stream, bool pdl,
                               cudaLaunchAttribute (&attributes)[2]) {
  return launch_config(dim3(static_cast<unsigned>(tiles * splits)), dim3(kThreads),
                       Tiling<N>::kSmemBytes, stream, pdl, static_cast<unsigned>(splits),
                       attributes);
}

template <typename T, typename OutT, int N>
void launch(const Params& p, int tiles, cudaStream_t stream, bool pdl) {
  cudaLaunchAttribute attributes[2];
  const cudaLaunchConfig_t config = make_config<N>(tiles, p.splits, stream, pdl, attributes);
  L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, weight_stream_kernel<T, OutT, N>, p));
}

// Clusters of `splits` blocks of the N-row kernel that can run at once on this device.
template <int N>
int max_active_clusters(int splits) {
  cudaLaunchAttribute attributes[2];
  // Any tile count: the query asks how many clusters fit, not how many the grid has.
  const cudaLaunchConfig_t config = make_config<N>(1, splits, nullptr, false, attributes);
  int clusters = 0;
  L2KV_CUDA_CHECK(cudaOccupancyMaxActiveClusters(
      &clusters, weight_stream_kernel<__nv_bfloat16, float, N>, &config));
  return clusters;
}

// Opting in to more than 48 KB of dynamic shared memory is a per-kernel attribute: set for
// every instantiation when the object is built, before any capture.
template <typename T, typename OutT, int N>
void allow_shared_memory() {
  L2KV_CUDA_CHECK(cudaFuncSetAttribute(weight_stream_kernel<T, OutT, N>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       Tiling<N>::kSmemBytes));
}
template <typename T, typename OutT>
void allow_shared_memory_all_buckets() {
  allow_shared_memory<T, OutT, 8>();
  allow_shared_memory<T, OutT, 16>();
  allow_shared_memory<T, OutT, 32>();
  allow_shared_memory<T, OutT, 64>();
  allow_shared_memory<T, OutT, 128>();
}

template <typename T, typename OutT>
void launch_bucket(int n, const Params& p, int tiles, cudaStream_t stream, bool pdl) {
  switch (n) {
    case 8:
      return launch<T, OutT, 8>(p, tiles, stream, pdl);
    case 16:
      return launch<T, OutT, 16>(p, tiles, stream, pdl);
    case 32:
      return launch<T, OutT, 32>(p, tiles, stream, pdl);
    case 64:
      return launch<T, OutT, 64>(p, tiles, stream, pdl);
    default:
      return launch<T, OutT, 128>(p, tiles, stream, pdl);
  }
}

int max_active_clusters_bucket(int n, int splits) {
  switch (n) {
    case 8:
      return max_active_clusters<8>(splits);
    case 16:
      return max_active_clusters<16>(splits);
    case 32:
      return max_active_clusters<32>(splits);
    case 64:
      return max_active_clusters<64>(splits);
    default:
      return max_active_clusters<128>(splits);
  }
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult status{};
    L2KV_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000,
                                                     cudaEnableDefault, &status));
    if (status != cudaDriverEntryPointSuccess || fn == nullptr)
      throw Error("WeightStreamGemm: the CUDA driver has no cuTensorMapEncodeTiled");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

bool aligned_16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

WeightStreamGemm::WeightStreamGemm() {
  allow_shared_memory_all_buckets<__nv_bfloat16, __nv_bfloat16>();
  allow_shared_memory_all_buckets<__nv_bfloat16, float>();
  allow_shared_memory_all_buckets<__half, __half>();
  allow_shared_memory_all_buckets<__half, float>();
  // How many tiles of each bucket one wave holds at each split count.
  for (int b = 0; b < kBuckets; ++b)
    for (int splits = 1; splits <= kMaxSplits; ++splits)
      resident_tiles_[b][splits - 1] = max_active_clusters_bucket(8 << b, splits);
}

WeightStreamGemm::~WeightStreamGemm() = default;

bool WeightStreamGemm::supports(int64_t rows, int64_t in, int64_t out, const void* x,
                                const void* w) {
  return rows >= 1 && rows <= kMaxRows && in >= 8 && in <= kMaxIn && in % 8 == 0 && out >= 1 &&
         out <= kMaxOut && aligned_16(x) && aligned_16(w);
}

void WeightStreamGemm::set_splits(int splits) {
  if (splits < 0 || splits > kMaxSplits)
    throw Error("WeightStreamGemm: split count " + std::to_string(splits) + " outside [0, " +
                std::to_string(kMaxSplits) + "] (0 = chosen per shape)");
  forced_splits_ = splits;
}

int WeightStreamGemm::splits_for(int64_t rows, int64_t in, int64_t out) const {
  const int n = bucket(rows);
  const int b = __builtin_ctz(static_cast<unsigned>(n / 8));
  const int64_t tiles = (out + tile_features(n) - 1) / tile_features(n);
  const int64_t k_chunks = (in + kChunkK - 1) / kChunkK;
  const auto allowed = [&](int splits) { return splits <= k_chunks; };
  if (forced_splits_ > 0) return allowed(forced_splits_) ? forced_splits_ : 1;
  // The most splits (blocks in flight) that still run every tile in one wave; one split when
  // even that takes several waves (the LM head).
  for (int splits = kMaxSplits; splits > 1; --splits)
    if (allowed(splits) && tiles <= resident_tiles_[b][splits - 1]) return splits;
  return 1;
}

const WeightStreamGemm::TensorMap& WeightStreamGemm::map_for(DType dtype, const void* base,
                                                             int64_t rows, int64_t in,
                                                             int box_rows) {
  const MapKey key{static_cast<int>(dtype), base, rows, in, box_rows};
  if (const auto it = maps_.find(key); it != maps_.end()) return *it->second;
  auto m = std::make_unique<TensorMap>();
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(in), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(in * kElemBytes)};
  const cuuint32_t box[2] = {kChunkK, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = tensor_map_encoder()(
      &m->map,
      dtype == DType::kFloat16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
      2, const_cast<void*>(base), dims, strides, box, element_strides,
      // 128-byte L2 promotion: each box row is one 128-byte run (256 was 1-2 % slower at 64 and
      // 128 rows on an H200, bench/NOTES.md).
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
      CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw Error("WeightStreamGemm: cuTensorMapEncodeTiled failed with " + std::to_string(r) +
                " for a " + std::to_string(rows) + " x " + std::to_string(in) + " operand");
  return *maps_.emplace(key, std::move(m)).first->second;
}

void WeightStreamGemm::run(DType dtype, const void* x, const void* w, void* y, bool f32_out,
                           int64_t rows, int64_t in, int64_t out, cudaStream_t stream, bool pdl) {
  if (!supports(rows, in, out, x, w))
    throw Error("WeightStreamGemm: unsupported problem rows=" + std::to_string(rows) +
                " in=" + std::to_string(in) + " out=" + std::to_string(out) +
                " (needs 1 <= rows <= 128, in a multiple of 8 in [8, " + std::to_string(kMaxIn) +
                "], 1 <= out <= " + std::to_string(kMaxOut) + ", 16-byte aligned x and w)");
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16)
    throw Error("WeightStreamGemm: operands must be bf16 or fp16");
  const int n = bucket(rows);
  const int tile_m = tile_features(n);
  Params p{};
  p.w_map = map_for(dtype, w, out, in, tile_m).map;
  p.x_map = map_for(dtype, x, rows, in, n).map;
  p.y = y;
  p.rows = rows;
  p.out = out;
  p.k_chunks = static_cast<int>((in + kChunkK - 1) / kChunkK);
  p.splits = splits_for(rows, in, out);
  p.w_hint = weight_hint_;
  const int tiles = static_cast<int>((out + tile_m - 1) / tile_m);
  if (dtype == DType::kFloat16) {
    if (f32_out)
      launch_bucket<__half, float>(n, p, tiles, stream, pdl);
    else
      launch_bucket<__half, __half>(n, p, tiles, stream, pdl);
  } else {
    if (f32_out)
      launch_bucket<__nv_bfloat16, float>(n, p, tiles, stream, pdl);
    else
      launch_bucket<__nv_bfloat16, __nv_bfloat16>(n, p, tiles, stream, pdl);
  }
}

}  // namespace l2kv
