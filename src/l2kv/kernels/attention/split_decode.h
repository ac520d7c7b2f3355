// SplitDecode: l2kv's production decode-attention kernel. Split-KV: each (sequence, KV head)
// is cut into slices planned on the host so all SMs stay busy; one thread block serves all
// query heads of its KV head from one K/V load through a cp.async pipeline and tensor cores;
// the last block of a split sequence merges the partial results. L2 prefetch of upcoming
// pages is a PrefetchPolicy.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <vector>

#include "l2kv/core/device_info.h"
#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/split_plan.h"

namespace l2kv {

class SplitDecode {
 public:
  // On `device`, or the current device when -1.
  explicit SplitDecode(int device = -1);
  ~SplitDecode();
  SplitDecode(const SplitDecode&) = delete;
  SplitDecode& operator=(const SplitDecode&) = delete;

  // Plans the work for these host-side lengths and uploads the plan on `stream`. Allocates
  // device memory only when this plan outgrows every earlier one. Validates `params`.
  void plan(const DecodeAttentionParams& params, std::span<const int32_t> host_seq_lens,
            cudaStream_t stream);
  // Plans only the batch's sequences `seqs` (ascending), whose query and output rows are
  // `q_rows`: the one-token sequences of a step that also has prompt chunks, whose rows are
  // not their sequence indices. `host_seq_lens` covers the whole batch, as for plan().
  void plan_rows(const DecodeAttentionParams& params, std::span<const int32_t> host_seq_lens,
                 std::span<const int32_t> seqs, std::span<const int32_t> q_rows,
                 cudaStream_t stream);

  // Graph mode: sizes every buffer for batches of up to `max_batch` sequences of `shape`
  // (heads, head_dim, dtype) once, so later plans never move them, and fixes the grid of
  // run() at a capacity the planner keeps to. Each plan() of a replayed graph's batch then only
  // rewrites the plan in place (blocks beyond its item count exit at once).
  void reserve_for_graphs(int32_t max_batch, const DecodeAttentionParams& shape);
  bool graph_mode() const { return graph_items_ > 0; }

  // Runs the last plan; no allocation and no host synchronization, so a CUDA graph can
  // capture it. The shape of `params` must match the one planned for. Runs share one
  // workspace (partials, arrival counters): a run on another stream than the previous one
  // first waits for it, so two runs are never in flight at once.
  void run(const DecodeAttentionParams& params, const PrefetchPolicy& policy,
           cudaStream_t stream) const;

  // The prefetch distance in tiles that `policy` resolves to for the current plan.
  int32_t prefetch_distance(const PrefetchPolicy& policy) const;

  // Tuning and benchmarking: fix the slice length in tiles of 64 tokens (0 = planner's choice).
  void set_forced_tiles_per_split(int32_t tiles) { forced_tiles_per_split_ = tiles; }

  const SplitPlan& current_plan() const { return plan_; }
  const DeviceInfo& device_info() const { return info_; }

 private:
  struct DeviceBuffer {
    void* ptr = nullptr;
    size_t bytes = 0;
  };
  void reserve(DeviceBuffer& buffer, size_t bytes, bool zero, cudaStream_t stream);
  // Where the plan's parts sit in plan_buffer_ (and in a staging slot), for up to `items`
  // work items and `pairs` (sequence, KV head) pairs.
  struct PlanLayout {
    size_t items = 0, pair_num_splits = 0, pair_first_slot = 0, bytes = 0;
  };
  static PlanLayout plan_layout(size_t items, size_t pairs);
  // Copies plan_ into a pinned staging slot and uploads it in one copy.
  void upload_plan(cudaStream_t stream);
  // plan() over `lens` (the planned sequences' lengths); items of planned sequence i read
  // sequence seqs[i] and rows q_rows[i] where those are given.
  void plan_lengths(const DecodeAttentionParams& params, std::span<const int32_t> lens,
                    std::span<const int32_t> seqs, std::span<const int32_t> q_rows,
                    cudaStream_t stream);
  // Graph mode: the fixed grid of a batch of `batch` sequences.
  int32_t item_capacity(int32_t batch) const;

  DeviceInfo info_;
  SplitPlan plan_;
  DType planned_dtype_ = DType::kBFloat16;
  KvStorage planned_storage_ = KvStorage::kModelDtype;
  int32_t planned_head_dim_ = 0;
  int32_t planned_group_ = 0;
  int32_t planned_batch_ = 0;
  int32_t planned_kv_heads_ = 0;
  int32_t ctas_per_sm_ = 0;
  int32_t forced_tiles_per_split_ = 0;
  int32_t graph_items_ = 0;  // > 0: graph mode, the fixed grid
  int32_t graph_kv_heads_ = 0;
  int32_t graph_max_batch_ = 0;
  std::vector<int32_t> searched_tiles_;  // lengths in tiles of the last searched plan
  int32_t searched_tiles_per_split_ = 0;
  // The uploaded plan: [item count (graph mode's kernels read it)][items][pair_num_splits]
  // [pair_first_slot], at layout_'s offsets.
  DeviceBuffer plan_buffer_;
  PlanLayout layout_;
  // Two pinned slots, used in turn, so a plan is written while the previous one's upload may
  // still wait in the stream behind a running step (the engine plans step N + 1 during N).
  struct StagingSlot {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t uploaded = nullptr;
  };
  StagingSlot staging_[2];
  int32_t next_staging_ = 0;
  DeviceBuffer pair_arrivals_;
  DeviceBuffer partial_out_;
  DeviceBuffer partial_lse_;
  // The last eager run, which a run on another stream waits for.
  mutable cudaEvent_t last_run_ = nullptr;
  mutable cudaStream_t last_run_stream_ = nullptr;
  mutable bool last_run_recorded_ = false;
};

}  // namespace l2kv
