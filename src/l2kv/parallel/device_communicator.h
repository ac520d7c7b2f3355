// The collectives of tensor-parallel ranks on CUDA devices, one thread per rank: all-reduce of
// the O and down projections' partial sums and the LM head's logits gathered on rank 0, on a
// stream and capturable in CUDA graphs. Small messages (decode: a hidden-size row per
// sequence) take the one-shot kernel over peer memory (kernels/parallel/one_shot_collective.h);
// larger ones NCCL, opened at run time (nccl_library.h).
//
// A DeviceGroup may also put several ranks on one device (tests of the sharded model on one
// GPU): it then has no NCCL, and every message must fit the one-shot staging buffers.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/kernels/parallel/one_shot_collective.h"
#include "l2kv/parallel/nccl_library.h"

namespace l2kv {

class DeviceGroup {
 public:
  // Messages up to this size take the one-shot kernel where every rank can read every other's
  // memory; larger ones (prefill) take NCCL.
  static constexpr int64_t kOneShotMaxBytes = int64_t{512} << 10;

  // One rank per entry of `devices`, in rank order (1 to kCollectiveMaxRanks). Distinct devices
  // need NCCL (throws l2kv::Error if it cannot be opened); repeated ones run one-shot only, with
  // staging halves of `shared_device_staging_bytes`.
  explicit DeviceGroup(std::vector<int> devices, int64_t shared_device_staging_bytes = 0);
  ~DeviceGroup();
  DeviceGroup(const DeviceGroup&) = delete;
  DeviceGroup& operator=(const DeviceGroup&) = delete;

  int32_t size() const { return static_cast<int32_t>(devices_.size()); }
  int device(int32_t rank) const { return devices_[static_cast<size_t>(rank)]; }
  bool uses_nccl() const { return uses_nccl_; }
  // Ends the group after a rank failed: waiting one-shot kernels return (their results are
  // garbage), host waits throw, and the NCCL communicators are aborted on a thread of its own
  // (ncclCommAbort waits for the graphs that captured their calls to be destroyed). Their owners
  // must make no NCCL call after this (DeviceCommunicator checks aborted() before each). The
  // first reason is kept.
  void abort(const std::string& why);
  // Empty unless aborted.
  std::string abort_reason() const;
  bool aborted() const { return aborted_.load(std::memory_order_acquire); }

 private:
  friend class DeviceCommunicator;
  // Waits until every rank has called it (a host barrier); throws if the group is aborted.
  void arrive_and_wait();

  std::vector<int> devices_;
  bool uses_nccl_ = false;
  int64_t staging_half_bytes_ = 0;
  ncclUniqueId nccl_id_{};
  int32_t* abort_flag_ = nullptr;  // host-mapped, read by the one-shot kernels
  mutable std::mutex mutex_;
  std::condition_variable arrived_;
  int32_t arrivals_ = 0;
  int64_t generation_ = 0;
  std::string abort_reason_;
  std::atomic<bool> aborted_{false};  // set before the NCCL communicators are aborted
  ops::CollectivePeers peers_;        // staging and flags of every rank (filled as ranks join)
  bool one_shot_ = true;              // every rank reads every other's memory
  bool shares_devices_ = false;       // some ranks share a device (see launch_barrier)
  std::vector<ncclComm_t> comms_;     // each rank's, for abort()
};

// Which kernel carries a collective: by its size (kAuto), or one of the two (benchmarks).
enum class CollectivePath : uint8_t { kAuto, kOneShot, kNccl };

class DeviceCommunicator {
 public:
  // Rank `rank` of `group`, made on that rank's device (it becomes current) by the thread
  // that will use it. Every rank's constructor must run at once: they wait for each other, as
  // their destructors do (unless the group was aborted). A rank that fails to join aborts the
  // group.
  DeviceCommunicator(std::shared_ptr<DeviceGroup> group, int32_t rank);
  ~DeviceCommunicator();
  DeviceCommunicator(const DeviceCommunicator&) = delete;
  DeviceCommunicator& operator=(const DeviceCommunicator&) = delete;

  int32_t rank() const { return rank_; }
  int32_t size() const { return group_->size(); }
  int device() const { return group_->device(rank_); }
  DeviceGroup& group() { return *group_; }

  // data = the element-wise sum of every rank's data (`count` elements), on `stream`.
  // A path forced where it cannot carry the message throws l2kv::Error.
  void all_reduce_sum(ops::CollectiveType type, void* data, int64_t count, cudaStream_t stream,
                      CollectivePath path = CollectivePath::kAuto);
  // residual += the sum over ranks of `partial`, then out = RMSNorm(residual) * weight, in one
  // kernel (ops::one_shot_all_reduce_add_rmsnorm) where the message takes the one-shot path;
  // returns false (nothing enqueued) where it does not: the caller all-reduces and normalizes.
  bool all_reduce_add_rmsnorm(ops::CollectiveType type, const void* partial, float* residual,
                              const void* weight, float eps, int32_t rows, int32_t hidden,
                              void* out, cudaStream_t stream);
  // Rank 0's `out` gets every rank's `bytes` of `in`, rank after rank; others' out is unused.
  void gather_to_first(const void* in, void* out, int64_t bytes, cudaStream_t stream);

 private:
  std::shared_ptr<DeviceGroup> group_;
  int32_t rank_ = 0;
  void* staging_ = nullptr;
  ops::CollectiveSignals* signals_ = nullptr;
  ops::CollectivePeers peers_;  // this rank's view, complete once every rank joined
  ncclComm_t nccl_ = nullptr;
  bool one_shot(int64_t bytes) const;
  // Ranks sharing a device meet on the host before each collective they launch (not while a
  // graph is captured): a host call that waits for the device's running kernels (a module
  // cuBLASLt loads on first use, an allocation) must not come while a peer's collective spins
  // waiting for this rank. Once every rank has launched everything before the collective, such
  // a wait can only be for collectives every rank has reached. One rank per GPU needs none.
  void launch_barrier(cudaStream_t stream);
  void join();  // the constructor's work: staging, peers, NCCL
  // Frees what join() made; with `meet_peers`, first waits until every rank releases (its
  // destructor: every rank's communicator is destroyed together, as they were made).
  void release(bool meet_peers) noexcept;
  void check_not_aborted() const;  // before an NCCL call: an aborted communicator is freed
  Error no_path(const char* what, int64_t bytes) const;  // neither path carries the message
};

}  // namespace l2kv
