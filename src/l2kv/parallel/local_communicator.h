// A Communicator for ranks that are threads of one process: the CPU backend's tensor parallelism
// and tests of sharded models. A LocalGroup is shared by `size` threads, each holding its own
// LocalCommunicator; a collective returns once every rank has called it.
#pragma once

#include <barrier>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "l2kv/parallel/communicator.h"

namespace l2kv {

class LocalGroup {
 public:
  explicit LocalGroup(int32_t size);
  int32_t size() const { return size_; }

 private:
  friend class LocalCommunicator;
  int32_t size_;
  std::barrier<> barrier_;
  std::vector<std::span<float>> buffers_;  // each rank's, published for the collective
};

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalGroup> group, int32_t rank);
  int32_t rank() const override { return rank_; }
  int32_t size() const override { return group_->size(); }
  // Throws l2kv::Error when the ranks' lengths differ (every rank throws).
  void all_reduce_sum(std::span<float> data) override;

 private:
  std::shared_ptr<LocalGroup> group_;
  int32_t rank_;
  std::vector<float> sum_;
};

}  // namespace l2kv
