#include "l2kv/kernels/attention/split_decode.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>

#include "l2kv/core/cuda_check.h"
#include "l2kv/kernels/attention/split_decode_kernel.h"

namespace l2kv {

namespace {
int resolve_device(int device) {
  if (device >= 0) return device;
  int current = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&current));
  return current;
}
}  // namespace

SplitDecode::SplitDecode(int device) : info_(query_device_info(resolve_device(device))) {}

SplitDecode::~SplitDecode() {
  // No throwing from a destructor. Uploads and runs still queued finish before their memory goes.
  for (StagingSlot& slot : staging_)
    if (slot.uploaded) cudaEventSynchronize(slot.uploaded);
  if (last_run_recorded_) cudaEventSynchronize(last_run_);
  for (DeviceBuffer* b : {&plan_buffer_, &pair_arrivals_, &partial_out_, &partial_lse_})
    if (b->ptr) cudaFree(b->ptr);
  for (StagingSlot& slot : staging_) {
    if (slot.host) cudaFreeHost(slot.host);
    if (slot.uploaded) cudaEventDestroy(slot.uploaded);
  }
  if (last_run_) cudaEventDestroy(last_run_);
}

SplitDecode::PlanLayout SplitDecode::plan_layout(size_t items, size_t pairs) {
  const auto align = [](size_t bytes) { return (bytes + 15) / 16 * 16; };
  PlanLayout layout;
  layout.items = 16;  // after the item count
  layout.pair_num_splits = align(layout.items + items * sizeof(SplitWorkItem));
  layout.pair_first_slot = align(layout.pair_num_splits + pairs * sizeof(int32_t));
  layout.bytes = align(layout.pair_first_slot + pairs * sizeof(int32_t));
  return layout;
}

void SplitDecode::upload_plan(cudaStream_t stream) {
  const size_t pairs = plan_.pair_num_splits.size();
  // Graph mode: captured kernels hold the offsets of the largest batch's plan.
  layout_ = graph_mode() ? plan_layout(static_cast<size_t>(graph_items_),
                                       static_cast<size_t>(graph_max_batch_) * graph_kv_heads_)
                         : plan_layout(plan_.items.size(), pairs);
  if (graph_mode() && layout_.bytes > plan_buffer_.bytes)
    throw Error("split decode: the plan outgrew the buffer reserved for graphs");
  reserve(plan_buffer_, layout_.bytes, false, nullptr);

  StagingSlot& slot = staging_[next_staging_];
  next_staging_ ^= 1;
  if (!slot.uploaded)
    L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&slot.uploaded, cudaEventDisableTiming));
  // Its previous upload must have left the slot before it is rewritten (one step back: done
  // or about to be).
  L2KV_CUDA_CHECK(cudaEventSynchronize(slot.uploaded));
  if (layout_.bytes > slot.bytes) {
    if (slot.host) L2KV_CUDA_CHECK(cudaFreeHost(slot.host));
    slot.host = nullptr;
    slot.bytes = 0;
    const size_t rounded = std::max<size_t>(layout_.bytes + layout_.bytes / 2, 4096);
    L2KV_CUDA_CHECK(cudaMallocHost(&slot.host, rounded));
    slot.bytes = rounded;
  }
  auto* host = static_cast<std::byte*>(slot.host);
  const auto num_items = static_cast<int32_t>(plan_.items.size());
  std::memcpy(host, &num_items, sizeof num_items);
  std::memcpy(host + layout_.items, plan_.items.data(), plan_.items.size() * sizeof(SplitWorkItem));
  std::memcpy(host + layout_.pair_num_splits, plan_.pair_num_splits.data(),
              pairs * sizeof(int32_t));
  std::memcpy(host + layout_.pair_first_slot, plan_.pair_first_slot.data(),
              pairs * sizeof(int32_t));
  // Up to the last pair: the bytes of a smaller batch's plan in graph mode's fixed layout.
  const size_t used = layout_.pair_first_slot + pairs * sizeof(int32_t);
  L2KV_CUDA_CHECK(cudaMemcpyAsync(plan_buffer_.ptr, host, used, cudaMemcpyHostToDevice, stream));
  L2KV_CUDA_CHECK(cudaEventRecord(slot.uploaded, stream));
}

void SplitDecode::reserve(DeviceBuffer& buffer, size_t bytes, bool zero, cudaStream_t stream) {
  if (bytes <= buffer.bytes) return;
  if (buffer.ptr) L2KV_CUDA_CHECK(cudaFree(buffer.ptr));
  buffer = {};
  const size_t rounded = std::max<size_t>(bytes + bytes / 2, 256);  // amortize regrowth
  L2KV_CUDA_CHECK(cudaMalloc(&buffer.ptr, rounded));
  buffer.bytes = rounded;
  // On the stream the kernels run on: a legacy-stream memset is not ordered before them when
  // that stream is non-blocking.
  if (zero) L2KV_CUDA_CHECK(cudaMemsetAsync(buffer.ptr, 0, rounded, stream));
}

int32_t SplitDecode::item_capacity(int32_t batch) const {
  // Two waves of slices balance small batches; larger ones have (sequence, head) pairs to spare.
  return std::max(batch * graph_kv_heads_, 2 * info_.sm_count * std::max(1, ctas_per_sm_));
}

void SplitDecode::reserve_for_graphs(int32_t max_batch, const DecodeAttentionParams& shape) {
  const PagedKvCache& kv = shape.kv;
  ctas_per_sm_ = split_decode_ctas_per_sm(kv.dtype, kv.head_dim, kv.fp8());
  const int32_t pairs = max_batch * kv.num_kv_heads;
  graph_kv_heads_ = kv.num_kv_heads;
  graph_max_batch_ = max_batch;
  planned_storage_ = kv.storage;
  graph_items_ = item_capacity(max_batch);
  const size_t slots = static_cast<size_t>(graph_items_);
  reserve(plan_buffer_, plan_layout(slots, static_cast<size_t>(pairs)).bytes, false, nullptr);
  reserve(pair_arrivals_, pairs * sizeof(int32_t), true, nullptr);
  L2KV_CUDA_CHECK(cudaStreamSynchronize(nullptr));  // zeroed before any stream uses it
  reserve(partial_out_, slots * shape.group_size() * kv.head_dim * sizeof(float), false, nullptr);
  reserve(partial_lse_, slots * shape.group_size() * sizeof(float), false, nullptr);
}

void SplitDecode::plan(const DecodeAttentionParams& params, std::span<const int32_t> host_seq_lens,
                       cudaStream_t stream) {
  validate_decode_attention(params, host_seq_lens);
  plan_lengths(params, host_seq_lens, {}, {}, stream);
}

void SplitDecode::plan_rows(const DecodeAttentionParams& params,
                            std::span<const int32_t> host_seq_lens, std::span<const int32_t> seqs,
                            std::span<const int32_t> q_rows, cudaStream_t stream) {
  validate_decode_attention(params, host_seq_lens);
  if (seqs.empty() || seqs.size() != q_rows.size())
    throw Error("split decode: plan_rows needs one query row per planned sequence");
  std::vector<int32_t> lens;
  lens.reserve(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i] < 0 || seqs[i] >= params.kv.batch_size || (i > 0 && seqs[i] <= seqs[i - 1]) ||
        q_rows[i] < 0)
      throw Error("split decode: planned sequences must be ascending batch indices with rows");
    lens.push_back(host_seq_lens[static_cast<size_t>(seqs[i])]);
  }
  std::vector<int32_t> rows(q_rows.begin(), q_rows.end());
  std::sort(rows.begin(), rows.end());
  if (std::adjacent_find(rows.begin(), rows.end()) != rows.end())
    throw Error("split decode: two planned sequences share a query row");
  plan_lengths(params, lens, seqs, q_rows, stream);
}

void SplitDecode::plan_lengths(const DecodeAttentionParams& params,
                               std::span<const int32_t> host_seq_lens,
                               std::span<const int32_t> seqs, std::span<const int32_t> q_rows,
                               cudaStream_t stream) {
  const PagedKvCache& kv = params.kv;
  if (graph_mode() && (kv.num_kv_heads != graph_kv_heads_ || kv.batch_size > graph_max_batch_))
    throw Error("split decode: batch of " + std::to_string(kv.batch_size) +
                " exceeds the size reserved for graphs");
  if (graph_mode() && kv.storage != planned_storage_)
    throw Error("split decode: KV storage differs from the one reserved for graphs");
  if (!graph_mode() && (ctas_per_sm_ == 0 || planned_dtype_ != kv.dtype ||
                        planned_head_dim_ != kv.head_dim || planned_storage_ != kv.storage))
    ctas_per_sm_ = split_decode_ctas_per_sm(kv.dtype, kv.head_dim, kv.fp8());
  SplitPlanConfig config;
  config.tile_tokens = kSplitTileTokens;
  config.concurrent_ctas = info_.sm_count * std::max(1, ctas_per_sm_);
  config.group_size = params.group_size();
  if (kv.fp8()) use_fp8_cache_costs(config);
  config.forced_tiles_per_split = forced_tiles_per_split_;
  // The slicing depends on the lengths in tiles only, which change every 64 tokens: between
  // such changes a decode loop reuses the last search's slice length (the search costs up to
  // a millisecond of host time at large batches; building the items is linear).
  std::vector<int32_t> tiles(host_seq_lens.size());
  for (size_t i = 0; i < tiles.size(); ++i)
    tiles[i] = (host_seq_lens[i] + kSplitTileTokens - 1) / kSplitTileTokens;
  const bool same_tiles = forced_tiles_per_split_ == 0 && searched_tiles_per_split_ > 0 &&
                          tiles == searched_tiles_ && kv.num_kv_heads == planned_kv_heads_ &&
                          params.group_size() == planned_group_ && kv.dtype == planned_dtype_ &&
                          kv.head_dim == planned_head_dim_ && kv.storage == planned_storage_;
  if (same_tiles) {
    config.forced_tiles_per_split = searched_tiles_per_split_;
    config.estimate_forced = false;
  }
  config.max_items = graph_mode() ? item_capacity(kv.batch_size) : 0;
  config.max_splits = kSplitMaxMergeSplits;
  plan_ = plan_split_decode(host_seq_lens, kv.num_kv_heads, config);
  if (!seqs.empty())
    for (SplitWorkItem& item : plan_.items) {
      item.q_row = q_rows[static_cast<size_t>(item.seq)];
      item.seq = seqs[static_cast<size_t>(item.seq)];
    }
  // A subset's search is not kept: the decode steps around a mixed step plan the whole batch.
  if (forced_tiles_per_split_ == 0 && !same_tiles && seqs.empty()) {
    searched_tiles_ = std::move(tiles);
    searched_tiles_per_split_ = plan_.tiles_per_split;
  }
  planned_dtype_ = kv.dtype;
  planned_storage_ = kv.storage;
  planned_head_dim_ = kv.head_dim;
  planned_group_ = params.group_size();
  planned_batch_ = kv.batch_size;
  planned_kv_heads_ = kv.num_kv_heads;

  const size_t pairs = plan_.pair_num_splits.size();
  const size_t slots = std::max<int32_t>(plan_.num_partial_slots, 1);
  reserve(pair_arrivals_, pairs * sizeof(int32_t), true, stream);
  reserve(partial_out_, slots * planned_group_ * kv.head_dim * sizeof(float), false, nullptr);
  reserve(partial_lse_, slots * planned_group_ * sizeof(float), false, nullptr);
  upload_plan(stream);
}

int32_t SplitDecode::prefetch_distance(const PrefetchPolicy& policy) const {
  // Tiles in flight per resident block if prefetch ran `steps` tiles ahead must fit in half the
  // L2 (read from the device), or prefetched lines are evicted before their loads arrive.
  const int64_t element_bytes = planned_storage_ == KvStorage::kFp8E4M3 ? 1 : 2;
  const int64_t tile_bytes = int64_t{2} * kSplitTileTokens * planned_head_dim_ * element_bytes;
  const int64_t resident =
      std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(plan_.items.size()),
                                             int64_t{info_.sm_count} * std::max(1, ctas_per_sm_)));
  const int64_t l2_bound = std::max<int64_t>(1, info_.l2_bytes / 2 / (resident * tile_bytes));
  switch (policy.mode) {
    case PrefetchMode::kOff:
      return 0;
    case PrefetchMode::kFixedDistance:
      return static_cast<int32_t>(std::min<int64_t>(std::max(1, policy.distance), l2_bound));
    case PrefetchMode::kAuto:
      // Off: on the H100, across the whole benchmark grid (bench/results/2026-11-26-h100), every
      // prefetch distance was slower than none or within noise. The cp.async pipeline of two
      // blocks per SM already keeps ~17 MB in flight, more than HBM needs; extra prefetches only
      // compete with it for L2 and issue slots (up to 25 % slower at batch 1).
      return 0;
  }
  return 0;
}

void SplitDecode::run(const DecodeAttentionParams& params, const PrefetchPolicy& policy,
                      cudaStream_t stream) const {
  const PagedKvCache& kv = params.kv;
  if (plan_.items.empty() || kv.batch_size != planned_batch_ ||
      kv.num_kv_heads != planned_kv_heads_ || kv.head_dim != planned_head_dim_ ||
      kv.dtype != planned_dtype_ || params.group_size() != planned_group_ ||
      kv.storage != planned_storage_)
    throw Error("split decode: run() called with a shape that differs from the last plan()");
  SplitKernelArgs args;
  args.params = params;
  const auto* plan = static_cast<const std::byte*>(plan_buffer_.ptr);
  args.items = reinterpret_cast<const SplitWorkItem*>(plan + layout_.items);
  args.pair_num_splits = reinterpret_cast<const int32_t*>(plan + layout_.pair_num_splits);
  args.pair_first_slot = reinterpret_cast<const int32_t*>(plan + layout_.pair_first_slot);
  args.pair_arrivals = static_cast<int32_t*>(pair_arrivals_.ptr);
  args.partial_out = static_cast<float*>(partial_out_.ptr);
  args.partial_lse = static_cast<float*>(partial_lse_.ptr);
  args.num_items = graph_mode() ? reinterpret_cast<const int32_t*>(plan) : nullptr;
  args.prefetch_distance = prefetch_distance(policy);
  args.prefetch_hint = policy.prefetch_hint;
  args.load_hint = policy.load_hint;
  args.pdl = policy.pdl;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  L2KV_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  const bool eager = capture == cudaStreamCaptureStatusNone;
  if (eager && last_run_recorded_ && stream != last_run_stream_)
    L2KV_CUDA_CHECK(cudaStreamWaitEvent(stream, last_run_, 0));
  launch_split_decode_kernel(
      args, graph_mode() ? item_capacity(planned_batch_) : static_cast<int32_t>(plan_.items.size()),
      stream);
  if (eager) {
    if (!last_run_) L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&last_run_, cudaEventDisableTiming));
    L2KV_CUDA_CHECK(cudaEventRecord(last_run_, stream));
    last_run_stream_ = stream;
    last_run_recorded_ = true;
  }
}

}  // namespace l2kv
