#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <string>
#include <type_traits>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/per_device.h"
#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/kv_tile.cuh"
#include "l2kv/kernels/attention/prefill_attention.h"
#include "l2kv/kernels/attention/prefill_attention_wgmma.h"
#include "l2kv/kernels/tensor_core.cuh"

namespace l2kv {
namespace {

constexpr int kLoadThreads = 128;  // threads that copy K/V tiles (the first four warps)
constexpr int kQueryTile = 16;     // query tokens per warp: the MMA's M
constexpr int kStages = 2;
constexpr float kLog2e = 1.4426950408889634f;

// Query tiles per (KV head, group) so that a block has at least four warps.
int subtiles_for(int group) {
  return std::max(1, 4 / group);
}
int warps_for(int group) {
  return std::max(4, group * subtiles_for(group));
}

// Shared memory: kStages tiles of K and V as stored; an fp8 cache adds one 16-bit K/V tile
// that the block widens each stored tile into.
template <int kHeadDim, bool kFp8>
constexpr size_t prefill_smem_bytes() {
  constexpr size_t tile = size_t{kKvTileTokens} * kHeadDim;
  return kStages * 2 * tile * (kFp8 ? 1 : 2) + (kFp8 ? 2 * tile * 2 : 0);
}

template <typename T, int kHeadDim, bool kFp8>
__global__ void __launch_bounds__(256)
    prefill_attention_kernel(const PrefillAttention::WorkItem* items, const T* q, T* out,
                             const PagedKvCache kv, int32_t num_q_heads, float softmax_scale,
                             int32_t sliding_window) {
  using Traits = tc::ElementTraits<T>;
  using Stored = std::conditional_t<kFp8, uint8_t, T>;
  constexpr int kTileElems = kKvTileTokens * kHeadDim;
  constexpr int kKSteps = kHeadDim / 16;
  constexpr int kOutTiles = kHeadDim / 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  Stored* smem = reinterpret_cast<Stored*>(smem_raw);
  auto k_stage = [&](int s) { return smem + s * 2 * kTileElems; };
  auto v_stage = [&](int s) { return smem + s * 2 * kTileElems + kTileElems; };

  const PrefillAttention::WorkItem item = items[blockIdx.x];
  const int group = num_q_heads / kv.num_kv_heads;
  const int subtiles = max(1, 4 / group);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, quad = lane % 4;
  const bool computes = warp < group * subtiles;
  const int head = item.kv_head * group + warp % group;
  const int sub = warp / group;
  const int warp_first = sub * kQueryTile;  // first query of this warp in the item
  const int warp_count = max(0, min(kQueryTile, item.q_count - warp_first));
  const int warp_last_pos = item.first_position + warp_first + warp_count - 1;
  const int kv_end = item.first_position + item.q_count;  // keys 0 .. kv_end - 1
  const int num_tiles = (kv_end + kKvTileTokens - 1) / kKvTileTokens;
  // A sliding window: query position p sees keys p - window + 1 .. p, so the item's first query
  // needs nothing before first_tile and each warp nothing before its own first visible key.
  const bool windowed = sliding_window > 0;
  const int first_tile =
      windowed ? max(0, item.first_position - sliding_window + 1) / kKvTileTokens : 0;
  const int warp_first_visible =
      windowed ? item.first_position + warp_first - sliding_window + 1 : 0;
  const int block_shift = __ffs(kv.block_size) - 1;
  auto load_tile = [&](int tile, int stage) {
    load_kv_tile<Stored, kHeadDim, kLoadThreads>(kv, item.seq, item.kv_head, tile * kKvTileTokens,
                                                 kv_end, k_stage(stage), v_stage(stage),
                                                 block_shift, false, 0);
  };

  if (threadIdx.x < kLoadThreads && first_tile < num_tiles)
    load_tile(first_tile, first_tile % kStages);
  ptx::cp_async_commit();

  // Q as the A operand: rows = this warp's 16 query tokens (lane / 4 and lane / 4 + 8).
  const int r0 = lane / 4, r1 = r0 + 8;
  uint32_t q_frag[kKSteps][4];
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks)
#pragma unroll
    for (int k = 0; k < 4; ++k) q_frag[ks][k] = 0u;
  if (computes) {
    auto q_row = [&](int r) {
      return q + (static_cast<int64_t>(item.q_row_begin + warp_first + r) * num_q_heads + head) *
                     kHeadDim;
    };
#pragma unroll
    for (int ks = 0; ks < kKSteps; ++ks) {
      if (r0 < warp_count) {
        q_frag[ks][0] = *reinterpret_cast<const uint32_t*>(q_row(r0) + ks * 16 + quad * 2);
        q_frag[ks][2] = *reinterpret_cast<const uint32_t*>(q_row(r0) + ks * 16 + 8 + quad * 2);
      }
      if (r1 < warp_count) {
        q_frag[ks][1] = *reinterpret_cast<const uint32_t*>(q_row(r1) + ks * 16 + quad * 2);
        q_frag[ks][3] = *reinterpret_cast<const uint32_t*>(q_row(r1) + ks * 16 + 8 + quad * 2);
      }
    }
  }
  // fp8: logits and outputs use the stored K and V; their scales apply here and at the end.
  const float scale_log2 = softmax_scale * kLog2e * (kFp8 ? kv.key_scale() : 1.f);
  const float v_scale = kFp8 ? kv.value_scale() : 1.f;
  const int pos0 = item.first_position + warp_first + r0, pos1 = pos0 + 8;
  float o_acc[kOutTiles][4] = {};
  float max0 = -INFINITY, max1 = -INFINITY, sum0 = 0.f, sum1 = 0.f;

  for (int tile = first_tile; tile < num_tiles; ++tile) {
    if (tile + 1 < num_tiles && threadIdx.x < kLoadThreads)
      load_tile(tile + 1, (tile + 1) % kStages);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    __syncthreads();
    const T* k_tile;
    const T* v_tile;
    if constexpr (kFp8) {
      // The whole block widens the stored tile; the end-of-iteration barrier keeps the widened
      // tile until every warp has used it.
      T* widened = reinterpret_cast<T*>(smem_raw + kStages * 2 * kTileElems);
      widen_fp8_rows<T, kHeadDim>(k_stage(tile % kStages), widened, 0, kKvTileTokens, threadIdx.x,
                                  blockDim.x);
      widen_fp8_rows<T, kHeadDim>(v_stage(tile % kStages), widened + kTileElems, 0, kKvTileTokens,
                                  threadIdx.x, blockDim.x);
      __syncthreads();
      k_tile = widened;
      v_tile = widened + kTileElems;
    } else {
      k_tile = k_stage(tile % kStages);
      v_tile = v_stage(tile % kStages);
    }
    const int tile_start = tile * kKvTileTokens;
    if (computes && warp_count > 0 && tile_start <= warp_last_pos &&
        tile_start + kKvTileTokens > warp_first_visible) {
      float s_acc[8][4] = {};
#pragma unroll
      for (int ks = 0; ks < kKSteps; ++ks)
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          uint32_t k_frag[4];
          tc::ldmatrix_x4(k_frag, k_tile + swizzled<kHeadDim>(np * 16 + (lane / 16) * 8 + lane % 8,
                                                              ks * 2 + (lane / 8) % 2));
          const uint32_t b0[2] = {k_frag[0], k_frag[1]};
          const uint32_t b1[2] = {k_frag[2], k_frag[3]};
          tc::mma_m16n8k16<T>(s_acc[2 * np], q_frag[ks], b0);
          tc::mma_m16n8k16<T>(s_acc[2 * np + 1], q_frag[ks], b1);
        }
      // Causal (and window) mask and online softmax for rows r0 (c0, c1) and r1 (c2, c3).
      const int low0 = windowed ? pos0 - sliding_window : -1;  // keys must be above these
      const int low1 = windowed ? pos1 - sliding_window : -1;
      float tile_max0 = -INFINITY, tile_max1 = -INFINITY;
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int key = tile_start + n * 8 + quad * 2 + i;
          s_acc[n][i] =
              (key <= pos0 && key > low0 && r0 < warp_count) ? s_acc[n][i] * scale_log2 : -INFINITY;
          s_acc[n][2 + i] = (key <= pos1 && key > low1 && r1 < warp_count)
                                ? s_acc[n][2 + i] * scale_log2
                                : -INFINITY;
          tile_max0 = fmaxf(tile_max0, s_acc[n][i]);
          tile_max1 = fmaxf(tile_max1, s_acc[n][2 + i]);
        }
#pragma unroll
      for (int m = 1; m <= 2; m *= 2) {
        tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, m));
        tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, m));
      }
      const float new0 = fmaxf(max0, tile_max0), new1 = fmaxf(max1, tile_max1);
      const float safe0 = new0 == -INFINITY ? 0.f : new0, safe1 = new1 == -INFINITY ? 0.f : new1;
      const float corr0 = exp2f(max0 - safe0), corr1 = exp2f(max1 - safe1);
      max0 = new0;
      max1 = new1;
      float part0 = 0.f, part1 = 0.f;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        s_acc[n][0] = exp2f(s_acc[n][0] - safe0);
        s_acc[n][1] = exp2f(s_acc[n][1] - safe0);
        s_acc[n][2] = exp2f(s_acc[n][2] - safe1);
        s_acc[n][3] = exp2f(s_acc[n][3] - safe1);
        part0 += s_acc[n][0] + s_acc[n][1];
        part1 += s_acc[n][2] + s_acc[n][3];
      }
      sum0 = sum0 * corr0 + part0;
      sum1 = sum1 * corr1 + part1;
#pragma unroll
      for (int t = 0; t < kOutTiles; ++t) {
        o_acc[t][0] *= corr0;
        o_acc[t][1] *= corr0;
        o_acc[t][2] *= corr1;
        o_acc[t][3] *= corr1;
      }
      // O += P V, P straight from the S registers (FlashAttention-2's layout reuse).
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const uint32_t p_frag[4] = {Traits::pack(s_acc[2 * j][0], s_acc[2 * j][1]),
                                    Traits::pack(s_acc[2 * j][2], s_acc[2 * j][3]),
                                    Traits::pack(s_acc[2 * j + 1][0], s_acc[2 * j + 1][1]),
                                    Traits::pack(s_acc[2 * j + 1][2], s_acc[2 * j + 1][3])};
#pragma unroll
        for (int dp = 0; dp < kOutTiles / 2; ++dp) {
          uint32_t v_frag[4];
          tc::ldmatrix_x4_trans(
              v_frag, v_tile + swizzled<kHeadDim>(j * 16 + lane % 8 + ((lane / 8) % 2) * 8,
                                                  dp * 2 + lane / 16));
          const uint32_t b0[2] = {v_frag[0], v_frag[1]};
          const uint32_t b1[2] = {v_frag[2], v_frag[3]};
          tc::mma_m16n8k16<T>(o_acc[2 * dp], p_frag, b0);
          tc::mma_m16n8k16<T>(o_acc[2 * dp + 1], p_frag, b1);
        }
      }
    }
    __syncthreads();  // the stage computed on is refilled next iteration
  }
  ptx::cp_async_wait<0>();
  if (!computes) return;
#pragma unroll
  for (int m = 1; m <= 2; m *= 2) {
    sum0 += __shfl_xor_sync(0xffffffffu, sum0, m);
    sum1 += __shfl_xor_sync(0xffffffffu, sum1, m);
  }
  auto out_row = [&](int r) {
    return out + (static_cast<int64_t>(item.q_row_begin + warp_first + r) * num_q_heads + head) *
                     kHeadDim;
  };
#pragma unroll
  for (int t = 0; t < kOutTiles; ++t) {
    const int d = t * 8 + quad * 2;
    if (r0 < warp_count) {
      T* o = out_row(r0);
      o[d] = Traits::from_float(o_acc[t][0] / sum0 * v_scale);
      o[d + 1] = Traits::from_float(o_acc[t][1] / sum0 * v_scale);
    }
    if (r1 < warp_count) {
      T* o = out_row(r1);
      o[d] = Traits::from_float(o_acc[t][2] / sum1 * v_scale);
      o[d + 1] = Traits::from_float(o_acc[t][3] / sum1 * v_scale);
    }
  }
}

template <typename T, int kHeadDim, bool kFp8>
void launch(const PrefillAttention::WorkItem* items, int32_t num_items, int group, const void* q,
            void* out, const PagedKvCache& kv, int32_t num_q_heads, float scale, int32_t window,
            cudaStream_t stream) {
  constexpr size_t kSmem = prefill_smem_bytes<kHeadDim, kFp8>();
  auto kernel = prefill_attention_kernel<T, kHeadDim, kFp8>;
  static PerDevice<bool> configured;  // the shared-memory limit is a per-device attribute
  configured.value([&](int) {
    L2KV_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kSmem)));
    return true;
  });
  kernel<<<num_items, 32 * warps_for(group), kSmem, stream>>>(
      items, static_cast<const T*>(q), static_cast<T*>(out), kv, num_q_heads, scale, window);
  L2KV_CUDA_CHECK_LAUNCH();
}

template <typename T, int kHeadDim>
void launch_for_storage(const PrefillAttention::WorkItem* items, int32_t num_items, int group,
                        const void* q, void* out, const PagedKvCache& kv, int32_t num_q_heads,
                        float scale, int32_t window, cudaStream_t stream) {
  if (kv.fp8())
    launch<T, kHeadDim, true>(items, num_items, group, q, out, kv, num_q_heads, scale, window,
                              stream);
  else
    launch<T, kHeadDim, false>(items, num_items, group, q, out, kv, num_q_heads, scale, window,
                               stream);
}

// The warp-MMA kernel for the cache's head_dim (plan() admits 64, 128 and 256).
template <typename T>
void launch_for_head_dim(const PrefillAttention::WorkItem* items, int32_t num_items, int group,
                         const void* q, void* out, const PagedKvCache& kv, int32_t num_q_heads,
                         float scale, int32_t window, cudaStream_t stream) {
  switch (kv.head_dim) {
    case 64:
      return launch_for_storage<T, 64>(items, num_items, group, q, out, kv, num_q_heads, scale,
                                       window, stream);
    case 128:
      return launch_for_storage<T, 128>(items, num_items, group, q, out, kv, num_q_heads, scale,
                                        window, stream);
    case 256:
      return launch_for_storage<T, 256>(items, num_items, group, q, out, kv, num_q_heads, scale,
                                        window, stream);
    default:
      throw Error("prefill attention: head_dim " + std::to_string(kv.head_dim) + " has no kernel");
  }
}

}  // namespace

PrefillAttention::~PrefillAttention() {
  if (device_items_) cudaFree(device_items_);
}

int64_t PrefillAttention::max_work_items(int32_t max_tokens, int32_t max_seqs, int32_t num_kv_heads,
                                         int32_t num_q_heads) {
  if (max_tokens < 1 || max_seqs < 1 || num_kv_heads < 1 || num_q_heads < num_kv_heads)
    throw Error("prefill attention: work-list limits must be positive");
  // A chunk of n tokens takes ceil(n / rows) <= n / rows + 1 tiles per KV head, and a step has
  // at most min(max_seqs, max_tokens) chunks of max_tokens tokens in all. The warp-MMA kernel's
  // tiles are never longer than the wgmma kernel's, so its count bounds both.
  const int64_t tile_rows = kQueryTile * subtiles_for(num_q_heads / num_kv_heads);
  const int64_t chunks = std::min(max_seqs, max_tokens);
  return int64_t{num_kv_heads} * (max_tokens / tile_rows + chunks);
}

void PrefillAttention::reserve(int32_t max_tokens, int32_t max_seqs, int32_t num_kv_heads,
                               int32_t num_q_heads) {
  const int64_t items = max_work_items(max_tokens, max_seqs, num_kv_heads, num_q_heads);
  reserved_tokens_ = max_tokens;
  reserved_seqs_ = max_seqs;
  if (static_cast<size_t>(items) <= capacity_) return;
  if (device_items_) L2KV_CUDA_CHECK(cudaFree(device_items_));
  device_items_ = nullptr;
  capacity_ = 0;
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_items_),
                             static_cast<size_t>(items) * sizeof(WorkItem)));
  capacity_ = static_cast<size_t>(items);
  items_.reserve(capacity_);
}

void PrefillAttention::set_max_wgmma_blocks(int32_t blocks) {
  if (blocks < 0)
    throw Error("prefill attention: " + std::to_string(blocks) +
                " persistent blocks (0 means one per SM)");
  max_wgmma_blocks_ = blocks;
}

int32_t prefill_order_bucket(int32_t longest_end) {
  static_assert(kOrderShortEnd / kOrderBucketFraction > 0);
  if (longest_end < kOrderShortEnd) return kOrderShortBucket;
  return static_cast<int32_t>(
      std::bit_floor(static_cast<uint32_t>(longest_end / kOrderBucketFraction)));
}

void PrefillAttention::plan(const PagedKvCache& kv, int32_t num_q_heads,
                            std::span<const PrefillChunk> chunks, cudaStream_t stream) {
  // A failed plan leaves none: run() must not launch items that were never uploaded.
  const auto fail = [this](const std::string& m) {
    items_.clear();
    throw Error("prefill attention: " + m);
  };
  if (kv.head_dim != 64 && kv.head_dim != 128 && kv.head_dim != 256)
    fail("head_dim must be 64, 128 or 256");
  if (kv.num_kv_heads <= 0 || num_q_heads % kv.num_kv_heads != 0)
    fail("query heads must divide into KV heads");
  const int32_t group = num_q_heads / kv.num_kv_heads;
  if (group > kMaxGqaGroup) fail("at most 8 query heads per KV head");
  if (chunks.empty()) fail("no chunks");
  const bool wgmma_serves = prefill_wgmma_supports(kv);
  if (kernel_ == PrefillKernel::kWgmma && !wgmma_serves)
    fail("the wgmma kernel needs head_dim 128 and a 16-bit cache");
  const bool wgmma = wgmma_serves && kernel_ != PrefillKernel::kWarpMma;
  const int32_t tile_rows =
      wgmma ? prefill_wgmma_tokens_per_item(group) : kQueryTile * subtiles_for(group);
  items_.clear();
  int32_t longest_end = 0;  // of any item: a chunk's last item ends where the chunk does
  for (const auto& c : chunks) {
    if (c.num_tokens <= 0 || c.first_position < 0 || c.seq < 0 || c.seq >= kv.batch_size)
      fail("chunk of sequence " + std::to_string(c.seq) + " is empty or out of range");
    if (static_cast<int64_t>(c.first_position) + c.num_tokens >
        static_cast<int64_t>(kv.max_blocks_per_seq) * kv.block_size)
      fail("chunk of sequence " + std::to_string(c.seq) + " reaches beyond its block table");
    longest_end = std::max(longest_end, c.first_position + c.num_tokens);
    for (int32_t h = 0; h < kv.num_kv_heads; ++h)
      for (int32_t t = 0; t < c.num_tokens; t += tile_rows)
        items_.push_back({c.seq, h, c.q_row_begin + t, std::min(tile_rows, c.num_tokens - t),
                          c.first_position + t});
  }
  // The heaviest blocks first (longest causal prefix, in buckets of prefill_order_bucket() keys
  // so the tail stays short), and within a bucket one (sequence, KV head) after another: blocks
  // that run together then read the same K/V tiles, which L2 serves once for all of them.
  const int32_t bucket = prefill_order_bucket(longest_end);
  std::stable_sort(items_.begin(), items_.end(), [bucket](const WorkItem& a, const WorkItem& b) {
    const int32_t end_a = a.first_position + a.q_count, end_b = b.first_position + b.q_count;
    if (end_a / bucket != end_b / bucket) return end_a > end_b;
    if (a.seq != b.seq) return a.seq < b.seq;
    if (a.kv_head != b.kv_head) return a.kv_head < b.kv_head;
    return end_a > end_b;
  });
  if (items_.size() > capacity_)
    fail(std::to_string(items_.size()) + " work items exceed the " + std::to_string(capacity_) +
         " reserved for steps of " + std::to_string(reserved_tokens_) + " tokens and " +
         std::to_string(reserved_seqs_) +
         " sequences (reserve(); the engine sizes it from --max-num-batched-tokens and "
         "--max-num-seqs)");
  L2KV_CUDA_CHECK(cudaMemcpyAsync(device_items_, items_.data(), items_.size() * sizeof(WorkItem),
                                  cudaMemcpyHostToDevice, stream));
  planned_group_ = group;
  planned_kernel_ = wgmma ? PrefillKernel::kWgmma : PrefillKernel::kWarpMma;
}

void PrefillAttention::run(const void* q, void* out, const PagedKvCache& kv, int32_t num_q_heads,
                           float softmax_scale, cudaStream_t stream, int32_t sliding_window) const {
  if (items_.empty() || num_q_heads / std::max(1, kv.num_kv_heads) != planned_group_)
    throw Error("prefill attention: run() without a matching plan()");
  if (sliding_window < 0) throw Error("prefill attention: negative sliding window");
  // The kernels take row maxima of unscaled logits.
  if (!(softmax_scale > 0.f)) throw Error("prefill attention: softmax_scale must be positive");
  const int32_t n = static_cast<int32_t>(items_.size());
  if (planned_kernel_ == PrefillKernel::kWgmma) {
    if (sliding_window > 0)
      throw Error(
          "prefill attention: the wgmma kernel has no sliding window (plan with "
          "PrefillKernel::kWarpMma)");
    launch_prefill_wgmma(device_items_, n, q, out, kv, num_q_heads, softmax_scale,
                         max_wgmma_blocks_, stream);
    return;
  }
  if (kv.dtype == DType::kBFloat16)
    launch_for_head_dim<__nv_bfloat16>(device_items_, n, planned_group_, q, out, kv, num_q_heads,
                                       softmax_scale, sliding_window, stream);
  else
    launch_for_head_dim<__half>(device_items_, n, planned_group_, q, out, kv, num_q_heads,
                                softmax_scale, sliding_window, stream);
}

}  // namespace l2kv
