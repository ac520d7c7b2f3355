// A Communicator for ranks that are threads of one process: the CPU backend's tensor parallelism
// and tests of sharded models. A LocalGroup is shared by `size` threads, each holding its own
// LocalCommunicator; a collective returns once every rank has called it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "l2kv/parallel/communicator.h"

namespace l2kv {

class LocalGroup {
 public:
  explicit LocalGroup(int32_t size);
  int32_t size() const { return size_; }
  // Ends the group: every rank waiting in a collective, and every later collective, throws
  // l2kv::Error with `reason`, so a rank that fails cannot leave the others waiting forever.
  void abort(const std::string& reason);
  // Empty until abort().
  std::string abort_reason() const;

 private:
  friend class LocalCommunicator;
  // Returns once all ranks have arrived. With `abortable`, throws instead once the group is
  // aborted; without, it waits for every rank whatever happens (for a phase every rank is sure
  // to finish: nothing in it throws).
  void arrive_and_wait(bool abortable);
  int32_t size_;
  mutable std::mutex mutex_;
  std::condition_variable arrived_;
  int32_t waiting_ = 0;
  int64_t generation_ = 0;
  std::string abort_reason_;
  std::vector<std::span<float>> buffers_;  // each rank's, published for the collective
};

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalGroup> group, int32_t rank);
  int32_t rank() const override { return rank_; }
  int32_t size() const override { return group_->size(); }
  // Throws l2kv::Error when the ranks' lengths differ (every rank throws) or the group was
  // aborted.
  void all_reduce_sum(std::span<float> data) override;

 private:
  std::shared_ptr<LocalGroup> group_;
  int32_t rank_;
  std::vector<float> sum_;  // sized before the rank publishes its buffer
};

}  // namespace l2kv
