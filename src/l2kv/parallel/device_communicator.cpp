#include "l2kv/parallel/device_communicator.h"

#include <algorithm>
#include <exception>
#include <set>
#include <thread>
#include <utility>

#include "l2kv/core/cuda_check.h"
#include "l2kv/core/error.h"

namespace l2kv {
namespace {

ncclDataType_t nccl_type(ops::CollectiveType type) {
  switch (type) {
    case ops::CollectiveType::kFloat16:
      return ncclFloat16;
    case ops::CollectiveType::kBFloat16:
      return ncclBfloat16;
    case ops::CollectiveType::kFloat32:
      return ncclFloat32;
  }
  return ncclFloat32;
}

}  // namespace

DeviceGroup::DeviceGroup(std::vector<int> devices, int64_t shared_device_staging_bytes)
    : devices_(std::move(devices)) {
  const auto n = static_cast<int32_t>(devices_.size());
  if (n < 1 || n > ops::kCollectiveMaxRanks)
    throw Error("tensor parallelism on CUDA takes 1 to " +
                std::to_string(ops::kCollectiveMaxRanks) + " ranks, got " + std::to_string(n));
  int count = 0;
  L2KV_CUDA_CHECK(cudaGetDeviceCount(&count));
  for (int d : devices_)
    if (d < 0 || d >= count)
      throw Error("tensor parallelism over " + std::to_string(n) +
                  " GPUs: cuda:" + std::to_string(d) + " does not exist (this machine has " +
                  std::to_string(count) + ")");
  const std::set<int> distinct(devices_.begin(), devices_.end());
  uses_nccl_ = n > 1 && static_cast<int32_t>(distinct.size()) == n;
  shares_devices_ = static_cast<int32_t>(distinct.size()) < n;
  if (uses_nccl_) {
    const NcclLibrary& nccl = nccl_library();
    nccl.check(nccl.get_unique_id(&nccl_id_), "ncclGetUniqueId");
    staging_half_bytes_ = kOneShotMaxBytes;
  } else {
    if (n > 1 && shared_device_staging_bytes <= 0)
      throw Error("tensor-parallel ranks sharing a device need one-shot staging (no NCCL there)");
    staging_half_bytes_ = std::max<int64_t>(shared_device_staging_bytes, 16);
  }
  for (int a : distinct)
    for (int b : distinct) {
      if (a == b) continue;
      int can = 0;
      L2KV_CUDA_CHECK(cudaDeviceCanAccessPeer(&can, a, b));
      one_shot_ = one_shot_ && can != 0;
    }
  if (!one_shot_ && !uses_nccl_)
    throw Error("tensor-parallel ranks: some GPUs of the group cannot read each other's memory");
  L2KV_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&abort_flag_), sizeof(int32_t),
                                cudaHostAllocMapped | cudaHostAllocPortable));
  *abort_flag_ = 0;
  peers_.size = n;
  peers_.staging_half_bytes = staging_half_bytes_;
  peers_.shared_device = shares_devices_;
  comms_.assign(static_cast<size_t>(n), nullptr);
}

DeviceGroup::~DeviceGroup() {
  if (abort_flag_) cudaFreeHost(abort_flag_);
}

void DeviceGroup::abort(const std::string& why) {
  std::vector<ncclComm_t> live;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (abort_reason_.empty()) abort_reason_ = why.empty() ? "aborted" : why;
    *static_cast<volatile int32_t*>(abort_flag_) = 1;
    aborted_.store(true, std::memory_order_release);
    for (ncclComm_t& c : comms_)  // their owners must not destroy them again
      if (c != nullptr) live.push_back(std::exchange(c, nullptr));
  }
  arrived_.notify_all();
  // ncclCommAbort stops the communicators' kernels at once, but then waits until every CUDA
  // graph that captured one of their calls is destroyed, which the ranks' threads do when they
  // free their runners: so it runs on a thread of its own (the comms are NCCL's to free).
  if (!live.empty())
    std::thread([live] {
      for (ncclComm_t c : live) nccl_library().comm_abort(c);
    }).detach();
}

std::string DeviceGroup::abort_reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return abort_reason_;
}

void DeviceGroup::arrive_and_wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  if (!abort_reason_.empty()) throw Error("tensor-parallel group aborted: " + abort_reason_);
  const int64_t generation = generation_;
  if (++arrivals_ == size()) {
    arrivals_ = 0;
    ++generation_;
    arrived_.notify_all();
    return;
  }
  arrived_.wait(lock, [&] { return generation_ != generation || !abort_reason_.empty(); });
  if (generation_ == generation) throw Error("tensor-parallel group aborted: " + abort_reason_);
}

DeviceCommunicator::DeviceCommunicator(std::shared_ptr<DeviceGroup> group, int32_t rank)
    : group_(std::move(group)), rank_(rank) {
  if (!group_ || rank < 0 || rank >= group_->size())
    throw Error("DeviceCommunicator: rank " + std::to_string(rank) + " outside its group");
  try {
    join();
  } catch (...) {
    // The other ranks may wait for this one in a barrier: end the group.
    group_->abort("rank " + std::to_string(rank_) + ": " + describe_current_exception());
    release(/*meet_peers=*/false);
    throw;
  }
}

void DeviceCommunicator::join() {
  DeviceGroup& g = *group_;
  const int32_t rank = rank_;
  L2KV_CUDA_CHECK(cudaSetDevice(device()));
  if (g.one_shot_) {
    L2KV_CUDA_CHECK(cudaMalloc(&staging_, static_cast<size_t>(2 * g.staging_half_bytes_)));
    L2KV_CUDA_CHECK(
        cudaMalloc(reinterpret_cast<void**>(&signals_), sizeof(ops::CollectiveSignals)));
    L2KV_CUDA_CHECK(cudaMemset(signals_, 0, sizeof(ops::CollectiveSignals)));
    for (int32_t r = 0; r < g.size(); ++r) {
      if (g.device(r) == device()) continue;
      const cudaError_t e = cudaDeviceEnablePeerAccess(g.device(r), 0);
      if (e == cudaErrorPeerAccessAlreadyEnabled)
        cudaGetLastError();  // another rank's thread on this device enabled it
      else
        L2KV_CUDA_CHECK(e);
    }
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());  // the flags are zero before any peer writes them
    std::lock_guard<std::mutex> lock(g.mutex_);
    g.peers_.staging[rank] = staging_;
    g.peers_.signals[rank] = signals_;
  }
  int32_t* abort_on_device = nullptr;
  L2KV_CUDA_CHECK(
      cudaHostGetDevicePointer(reinterpret_cast<void**>(&abort_on_device), g.abort_flag_, 0));
  g.arrive_and_wait();  // every rank's staging is known
  {
    std::lock_guard<std::mutex> lock(g.mutex_);
    peers_ = g.peers_;
  }
  peers_.rank = rank;
  peers_.abort = abort_on_device;
  // Past the barrier nothing but NCCL's own set-up may fail: a peer blocked in ncclCommInitRank
  // cannot be released by an abort.
  if (g.uses_nccl_) {
    const NcclLibrary& nccl = nccl_library();
    nccl.check(nccl.comm_init_rank(&nccl_, g.size(), g.nccl_id_, rank),
               "ncclCommInitRank (rank " + std::to_string(rank) + ")");
    std::lock_guard<std::mutex> lock(g.mutex_);
    g.comms_[static_cast<size_t>(rank)] = nccl_;
  }
  g.arrive_and_wait();  // every rank can communicate
}

void DeviceCommunicator::check_not_aborted() const {
  if (group_->aborted()) throw Error("tensor-parallel group aborted: " + group_->abort_reason());
}

DeviceCommunicator::~DeviceCommunicator() {
  // Destroyed by an exception on its way out: the peers may wait for this rank in a collective
  // that will never come, so end the group instead of waiting for them.
  const bool unwinding = std::uncaught_exceptions() > 0;
  if (unwinding) group_->abort("rank " + std::to_string(rank_) + " left on an exception");
  release(/*meet_peers=*/!unwinding);
}

void DeviceCommunicator::release(bool meet_peers) noexcept {
  cudaSetDevice(device());
  // A peer's last one-shot kernel may still read this rank's staging: free it once every rank
  // is done with its work (not after an abort, when peers may never come).
  if (meet_peers && !group_->aborted()) {
    cudaDeviceSynchronize();
    try {
      group_->arrive_and_wait();
    } catch (...) {  // aborted meanwhile
    }
  }
  if (nccl_ != nullptr) {
    bool ours = false;  // false once abort() has taken and aborted it
    {
      std::lock_guard<std::mutex> lock(group_->mutex_);
      auto& slot = group_->comms_[static_cast<size_t>(rank_)];
      ours = slot == nccl_;
      slot = nullptr;
    }
    if (ours) nccl_library().comm_destroy(nccl_);
  }
  if (staging_) cudaFree(staging_);
  if (signals_) cudaFree(signals_);
  nccl_ = nullptr, staging_ = nullptr, signals_ = nullptr;
}

Error DeviceCommunicator::no_path(const char* what, int64_t bytes) const {
  return Error(std::string(what) + " of " + std::to_string(bytes) +
               " bytes: the one-shot kernel takes positive multiples of 16 bytes up to " +
               std::to_string(group_->staging_half_bytes_) + " and this group has no NCCL");
}

void DeviceCommunicator::launch_barrier(cudaStream_t stream) {
  if (!group_->shares_devices_) return;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  L2KV_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture == cudaStreamCaptureStatusNone) group_->arrive_and_wait();
}

// The same answer on every rank for the same call (its size alone), so all take the same path;
// the kernel refuses unaligned buffers.
bool DeviceCommunicator::one_shot(int64_t bytes) const {
  const DeviceGroup& g = *group_;
  const int64_t limit = g.uses_nccl_ ? DeviceGroup::kOneShotMaxBytes : g.staging_half_bytes_;
  return g.one_shot_ && bytes > 0 && bytes % 16 == 0 && bytes <= limit;
}

void DeviceCommunicator::all_reduce_sum(ops::CollectiveType type, void* data, int64_t count,
                                        cudaStream_t stream, CollectivePath path) {
  if (size() == 1) return;
  const int64_t bytes = count * ops::collective_type_bytes(type);
  if (path == CollectivePath::kOneShot && !group_->one_shot_)
    throw Error("one-shot all-reduce: the group's GPUs cannot read each other's memory");
  if (path == CollectivePath::kOneShot || (path == CollectivePath::kAuto && one_shot(bytes))) {
    launch_barrier(stream);
    ops::one_shot_all_reduce(type, data, data, count, peers_, stream);
    return;
  }
  if (nccl_ == nullptr) throw no_path("all-reduce", bytes);
  check_not_aborted();
  const NcclLibrary& nccl = nccl_library();
  nccl.check(nccl.all_reduce(data, data, static_cast<size_t>(count), nccl_type(type), ncclSum,
                             nccl_, stream),
             "ncclAllReduce");
}

bool DeviceCommunicator::all_reduce_add_rmsnorm(ops::CollectiveType type, const void* partial,
                                                float* residual, const void* weight, float eps,
                                                int32_t rows, int32_t hidden, void* out,
                                                cudaStream_t stream) {
  if (size() == 1 || hidden % 8 != 0 ||
      !one_shot(int64_t{rows} * hidden * ops::collective_type_bytes(type)))
    return false;
  launch_barrier(stream);
  ops::one_shot_all_reduce_add_rmsnorm(type, partial, residual, weight, eps, rows, hidden, out,
                                       peers_, stream);
  return true;
}

void DeviceCommunicator::gather_to_first(const void* in, void* out, int64_t bytes,
                                         cudaStream_t stream) {
  if (size() == 1) {
    if (out != in)
      L2KV_CUDA_CHECK(
          cudaMemcpyAsync(out, in, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  if (one_shot(bytes)) {
    launch_barrier(stream);
    ops::one_shot_gather_to_first(in, out, bytes, peers_, stream);
    return;
  }
  if (nccl_ == nullptr) throw no_path("gather", bytes);
  check_not_aborted();
  const NcclLibrary& nccl = nccl_library();
  nccl.check(nccl.group_start(), "ncclGroupStart");
  if (rank_ == 0) {
    L2KV_CUDA_CHECK(
        cudaMemcpyAsync(out, in, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, stream));
    for (int32_t r = 1; r < size(); ++r)
      nccl.check(nccl.recv(static_cast<char*>(out) + r * bytes, static_cast<size_t>(bytes),
                           ncclUint8, r, nccl_, stream),
                 "ncclRecv");
  } else {
    nccl.check(nccl.send(in, static_cast<size_t>(bytes), ncclUint8, 0, nccl_, stream), "ncclSend");
  }
  nccl.check(nccl.group_end(), "ncclGroupEnd");
}

}  // namespace l2kv
