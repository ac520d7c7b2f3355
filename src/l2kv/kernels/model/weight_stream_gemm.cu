// The Hopper decode projection (weight_stream_gemm.h): a TMA -> shared-memory ring -> wgmma
// pipeline with one producer thread and c consumer warpgroups, stream-K over SMs.
//
// Block layout: warps 0 .. 4c-1 are the consumer warpgroups (warpgroup g computes output
// features [64 g, 64 g + 64) of the current 64c-feature tile), warp 4c is the producer, of
// which one lane issues every TMA load. A stage holds W[64c x 64] and x[N x 64], both
// K-major with 128-byte swizzle, as wgmma wants them; full[s] completes when the stage's
// bytes have landed (transaction count), empty[s] when all consumer warps are done with it.
//
// Stream-K: the iterations (tile, k chunk), tile-major, are cut into gridDim.x equal
// contiguous ranges. A block accumulates in registers while its range stays in one tile;
// at a tile's end it writes y directly when it covered all of the tile's k chunks, else it
// stores its fp32 partial tile in the workspace, and the block whose share completes the
// tile's k count (a counter per tile and warpgroup) sums all partials in block order and
// writes y. A block's range touches at most two split tiles (its first and its last), so
// two partial slots per block suffice.
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

constexpr int kWarpSize = 32;
constexpr int kWarpgroupThreads = 128;
constexpr int kWarpgroupM = 64;  // wgmma's M: output features per warpgroup
constexpr int kMaxConsumers = 4;
constexpr int kElemBytes = 2;
constexpr int kChunkK = 128 / kElemBytes;  // one 128-byte swizzle row of k per stage
constexpr int kK16PerChunk = kChunkK / 16;
constexpr int kK16Bytes = 16 * kElemBytes;
constexpr int kSwizzleAlign = 1024;  // 128-byte swizzle repeats every 8 rows
constexpr int kSlots = 2;            // partial tiles per block (first and last tile)
constexpr int kPartialFloats = kWarpgroupM * static_cast<int>(WeightStreamGemm::kMaxRows);
// Shared memory for stages: with one block per SM this leaves room for nothing else, which
// the kernel does not need. 100 KB+ of weights in flight per SM is several times what
// covers HBM latency; more stages than 12 only lengthen the start.
constexpr int kStageBudgetBytes = 200 * 1024;
constexpr int kMaxStages = 12;

template <int N>
struct Tiling {
  static_assert(N % 8 == 0 && N >= 8 && N <= WeightStreamGemm::kMaxRows);
  // Every block re-reads x from L2 once per tile it works on, so x's L2 traffic is N / kTileM
  // of W's: at 32+ rows four consumer warpgroups (256 features per tile) keep it at most half.
  static constexpr int kConsumers = N >= 32 ? 4 : 2;
  static constexpr int kTileM = kWarpgroupM * kConsumers;
  static constexpr int kConsumerWarps = kConsumers * kWarpgroupThreads / kWarpSize;
  static constexpr int kThreads = kConsumers * kWarpgroupThreads + kWarpSize;  // + producer
  static constexpr int kProducerWarp = kConsumerWarps;
  static constexpr int kWBytes = kTileM * kChunkK * kElemBytes;
  static constexpr int kXBytes = N * kChunkK * kElemBytes;
  static constexpr int kStageBytes = kWBytes + kXBytes;
  static_assert(kWBytes % kSwizzleAlign == 0 && kXBytes % kSwizzleAlign == 0);
  static constexpr int kStages =
      kStageBudgetBytes / kStageBytes < kMaxStages ? kStageBudgetBytes / kStageBytes : kMaxStages;
  static constexpr int kAccs = N / 2;  // fp32 accumulators per consumer thread
  static constexpr int kBarrierBytes = 2 * kStages * static_cast<int>(sizeof(uint64_t));
  static constexpr int kSmemBytes = kSwizzleAlign + kStages * kStageBytes + kBarrierBytes;
};

int tile_features(int n) {
  return n >= 32 ? Tiling<32>::kTileM : Tiling<8>::kTileM;
}

struct Params {
  CUtensorMap w_map;  // W [out x in], box [kTileM x 64]
  CUtensorMap x_map;  // x [rows x in], box [N x 64]; rows past `rows` arrive as zeros
  void* y;
  float* partials;
  uint32_t* counters;
  int64_t rows, out;
  int64_t k_chunks;    // ceil(in / 64); the last chunk's missing k arrive as zeros
  int64_t iterations;  // tiles * k_chunks
  int64_t blocks;      // gridDim.x
  L2EvictionHint w_hint;
};

__device__ __forceinline__ int64_t range_begin(const Params& p, int64_t block) {
  return block * p.iterations / p.blocks;
}
// The block whose range holds iteration i.
__device__ __forceinline__ int64_t block_of(const Params& p, int64_t i) {
  int64_t b = i * p.blocks / p.iterations;  // range_begin(b) <= i
  while (b + 1 < p.blocks && range_begin(p, b + 1) <= i) ++b;
  return b;
}
// Partial tile of block b, slot 0 (its first tile) or 1 (its last), warpgroup wg.
__device__ __forceinline__ float* partial_tile(const Params& p, int64_t b, int slot, int wg) {
  return p.partials + ((b * kSlots + slot) * kMaxConsumers + wg) * int64_t{kPartialFloats};
}

__device__ __forceinline__ void warpgroup_barrier(int wg) {
  // Named barriers 1-4 (0 is __syncthreads), one per consumer warpgroup.
  asm volatile("bar.sync %0, %1;" ::"r"(1 + wg), "n"(kWarpgroupThreads) : "memory");
}

template <typename OutT>
__device__ __forceinline__ OutT to_output(float v) {
  if constexpr (std::is_same_v<OutT, float>)
    return v;
  else
    return tc::ElementTraits<OutT>::from_float(v);
}

// Writes the warpgroup's 64 x N accumulator tile (wgmma layout) to y[m][n], features first.
template <int N, typename OutT>
__device__ __forceinline__ void store_y(const Params& p, const float (&acc)[N / 2],
                                        int64_t first_feature, int t) {
  const int warp = t / kWarpSize, lane = t % kWarpSize;
  const int64_t n0 = first_feature + warp * 16 + lane / 4;
  OutT* y = static_cast<OutT*>(p.y);
#pragma unroll
  for (int j = 0; j < N / 8; ++j)
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int64_t n = n0 + 8 * (r / 2);
      const int64_t m = 8 * j + 2 * (lane % 4) + r % 2;
      if (n < p.out && m < p.rows) y[m * p.out + n] = to_output<OutT>(acc[4 * j + r]);
    }
}

template <typename T, typename OutT, int N>
__global__ void __launch_bounds__(Tiling<N>::kThreads, 1)
    weight_stream_kernel(const __grid_constant__ Params p) {
  using Tiling = Tiling<N>;
  constexpr int kStages = Tiling::kStages;
  constexpr int kConsumers = Tiling::kConsumers;
  constexpr int kTileM = Tiling::kTileM;
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
  __shared__ int last_arrival[kConsumers];

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      ptx::mbarrier_init(&full[s], 1);
      ptx::mbarrier_init(&empty[s], Tiling::kConsumerWarps);
    }
    ptx::mbarrier_init_fence();
  }
  __syncthreads();

  const int64_t block = blockIdx.x;
  const int64_t begin = range_begin(p, block), end = range_begin(p, block + 1);
  const int count = static_cast<int>(end - begin);  // <= iterations / blocks + 1
  const int first_tile = static_cast<int>(begin / p.k_chunks);
  const int first_chunk = static_cast<int>(begin % p.k_chunks);
  const int k_chunks = static_cast<int>(p.k_chunks);

  if (warp == Tiling::kProducerWarp) {
    if (lane != 0) return;
    const uint64_t w_policy = ptx::make_l2_policy(p.w_hint);                    // W is read once
    const uint64_t x_policy = ptx::make_l2_policy(L2EvictionHint::kEvictLast);  // every block
    // (tile, chunk) of iteration i, advanced without divisions.
    int tile = first_tile, chunk = first_chunk;
    auto advance = [&] {
      if (++chunk == k_chunks) chunk = 0, ++tile;
    };
    const int early = count < kStages ? count : kStages;
    // The first stages' weights do not depend on the kernel ahead: request them before the
    // wait, x after it.
    for (int i = 0; i < early; ++i, advance()) {
      ptx::mbarrier_arrive_expect_tx(&full[i], Tiling::kStageBytes);
      ptx::tma_load_2d(stage_w(i), &p.w_map, &full[i], chunk * kChunkK, tile * kTileM, w_policy);
    }
    ptx::grid_dependency_wait();
    {
      int c = first_chunk;
      for (int i = 0; i < early; ++i) {
        ptx::tma_load_2d(stage_x(i), &p.x_map, &full[i], c * kChunkK, 0, x_policy);
        if (++c == k_chunks) c = 0;
      }
    }
    int s = early % kStages;
    uint32_t parity = early == kStages ? 0 : 1;  // of the consumers' release to wait for
    for (int i = early; i < count; ++i, advance()) {
      ptx::mbarrier_wait(&empty[s], parity);
      ptx::mbarrier_arrive_expect_tx(&full[s], Tiling::kStageBytes);
      ptx::tma_load_2d(stage_w(s), &p.w_map, &full[s], chunk * kChunkK, tile * kTileM, w_policy);
      ptx::tma_load_2d(stage_x(s), &p.x_map, &full[s], chunk * kChunkK, 0, x_policy);
      if (++s == kStages) s = 0, parity ^= 1;
    }
    return;
  }

  // Consumers. y and the workspace may still be read by the kernel ahead: wait for it.
  ptx::grid_dependency_wait();
  const int wg = warp / 4;
  const int t = static_cast<int>(threadIdx.x) % kWarpgroupThreads;
  float acc[Tiling::kAccs] = {};
  int s = 0;
  uint32_t parity = 0;
  int tile = first_tile, chunk = first_chunk;
  for (int i = 0; i < count;) {
    // One segment: the block's iterations inside `tile`, chunks [k_lo, k_hi).
    const int k_lo = chunk;
    const int k_hi = count - i < k_chunks - chunk ? chunk + (count - i) : k_chunks;
    for (; chunk < k_hi; ++chunk, ++i) {
      ptx::mbarrier_wait(&full[s], parity);
      ptx::wgmma_fence();
      const uint8_t* a = stage_w(s) + wg * kWarpgroupM * kChunkK * kElemBytes;
      const uint8_t* b = stage_x(s);
#pragma unroll
      for (int kk = 0; kk < kK16PerChunk; ++kk)
        ptx::wgmma_m64k16<N, T>(acc, ptx::wgmma_descriptor_k_major_sw128(a + kk * kK16Bytes),
                                ptx::wgmma_descriptor_k_major_sw128(b + kk * kK16Bytes),
                                chunk != k_lo || kk != 0);
      ptx::wgmma_commit();
      ptx::wgmma_wait<0>();
      if (lane == 0) ptx::mbarrier_arrive(&empty[s]);
      if (++s == kStages) s = 0, parity ^= 1;
    }
    const int64_t done_tile = tile;
    const int64_t first_feature = done_tile * kTileM + wg * kWarpgroupM;
    if (chunk == k_chunks) chunk = 0, ++tile;

    if (k_lo == 0 && k_hi == k_chunks) {  // the whole tile is this block's
      store_y<N, OutT>(p, acc, first_feature, t);
      continue;
    }
    // A split tile: publish the partial, count its k chunks; the block that completes the
    // count sums all partials of the tile in block order (the same sum whoever is last).
    const int my_slot = done_tile == first_tile ? 0 : 1;
    float* mine = partial_tile(p, block, my_slot, wg);
#pragma unroll
    for (int r = 0; r < Tiling::kAccs; ++r) mine[r * kWarpgroupThreads + t] = acc[r];
    __threadfence();
    warpgroup_barrier(wg);
    if (t == 0) {
      const auto share = static_cast<uint32_t>(k_hi - k_lo);
      uint32_t* counter = p.counters + done_tile * kMaxConsumers + wg;
      const bool last = atomicAdd(counter, share) + share == static_cast<uint32_t>(k_chunks);
      if (last) atomicExch(counter, 0u);  // ready for the next call
      last_arrival[wg] = last;
    }
    warpgroup_barrier(wg);
    if (!last_arrival[wg]) continue;
    __threadfence();
    const int64_t first_block = block_of(p, done_tile * p.k_chunks);
    const int64_t last_block = block_of(p, (done_tile + 1) * p.k_chunks - 1);
    // Every partial, this block's included, comes back from the workspace: one array of
    // accumulators (a second would not fit 128 registers at 128 rows).
#pragma unroll
    for (int r = 0; r < Tiling::kAccs; ++r) acc[r] = 0.f;
    for (int64_t b = first_block; b <= last_block; ++b) {
      // Block b's slot for this tile: 0 when the tile is its first, else 1 (its last).
      const int slot = range_begin(p, b) / p.k_chunks == done_tile ? 0 : 1;
      const float* partial = partial_tile(p, b, slot, wg) + t;
#pragma unroll
      for (int r = 0; r < Tiling::kAccs; ++r) acc[r] += __ldcg(partial + r * kWarpgroupThreads);
    }
    store_y<N, OutT>(p, acc, first_feature, t);
  }
}

int bucket(int64_t rows) {
  for (int n = 8;; n *= 2)
    if (rows <= n) return n;
}

template <typename T, typename OutT, int N>
void launch(const Params& p, cudaStream_t stream, bool pdl) {
  constexpr int kSmem = Tiling<N>::kSmemBytes;
  cudaLaunchAttribute attribute;
  const cudaLaunchConfig_t config =
      launch_config(dim3(static_cast<unsigned>(p.blocks)), dim3(Tiling<N>::kThreads), kSmem, stream,
                    pdl, attribute);
  L2KV_CUDA_CHECK(cudaLaunchKernelEx(&config, weight_stream_kernel<T, OutT, N>, p));
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
void launch_bucket(int n, const Params& p, cudaStream_t stream, bool pdl) {
  switch (n) {
    case 8:
      return launch<T, OutT, 8>(p, stream, pdl);
    case 16:
      return launch<T, OutT, 16>(p, stream, pdl);
    case 32:
      return launch<T, OutT, 32>(p, stream, pdl);
    case 64:
      return launch<T, OutT, 64>(p, stream, pdl);
    default:
      return launch<T, OutT, 128>(p, stream, pdl);
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
  int device = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&device));
  L2KV_CUDA_CHECK(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device));
  const size_t partial_floats = size_t(sm_count_) * kSlots * kMaxConsumers * kPartialFloats;
  L2KV_CUDA_CHECK(cudaMalloc(&partials_, partial_floats * sizeof(float)));
  const size_t counters = size_t{kMaxTiles} * kMaxConsumers;
  L2KV_CUDA_CHECK(cudaMalloc(&counters_, counters * sizeof(uint32_t)));
  L2KV_CUDA_CHECK(cudaMemset(counters_, 0, counters * sizeof(uint32_t)));
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());  // counters zeroed before any stream uses them
  allow_shared_memory_all_buckets<__nv_bfloat16, __nv_bfloat16>();
  allow_shared_memory_all_buckets<__nv_bfloat16, float>();
  allow_shared_memory_all_buckets<__half, __half>();
  allow_shared_memory_all_buckets<__half, float>();
}

WeightStreamGemm::~WeightStreamGemm() {
  cudaFree(partials_);
  cudaFree(counters_);
}

bool WeightStreamGemm::supports(int64_t rows, int64_t in, int64_t out, const void* x,
                                const void* w) {
  return rows >= 1 && rows <= kMaxRows && in >= 8 && in <= kMaxIn && in % 8 == 0 && out >= 1 &&
         out <= kMaxTiles * kMaxFeaturesPerTile && aligned_16(x) && aligned_16(w);
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
      CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
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
                "], out <= " + std::to_string(kMaxTiles * kMaxFeaturesPerTile) +
                ", 16-byte aligned x and w)");
  if (dtype != DType::kBFloat16 && dtype != DType::kFloat16)
    throw Error("WeightStreamGemm: operands must be bf16 or fp16");
  const int n = bucket(rows);
  Params p{};
  const int tile_m = tile_features(n);
  p.w_map = map_for(dtype, w, out, in, tile_m).map;
  p.x_map = map_for(dtype, x, rows, in, n).map;
  p.y = y;
  p.partials = partials_;
  p.counters = counters_;
  p.rows = rows;
  p.out = out;
  p.k_chunks = (in + kChunkK - 1) / kChunkK;
  p.iterations = (out + tile_m - 1) / tile_m * p.k_chunks;
  p.blocks = std::min<int64_t>(sm_count_, p.iterations);
  p.w_hint = weight_hint_;
  if (dtype == DType::kFloat16) {
    if (f32_out)
      launch_bucket<__half, float>(n, p, stream, pdl);
    else
      launch_bucket<__half, __half>(n, p, stream, pdl);
  } else {
    if (f32_out)
      launch_bucket<__nv_bfloat16, float>(n, p, stream, pdl);
    else
      launch_bucket<__nv_bfloat16, __nv_bfloat16>(n, p, stream, pdl);
  }
}

}  // namespace l2kv
