#include "l2kv/parallel/local_communicator.h"

#include <algorithm>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {

LocalGroup::LocalGroup(int32_t size) : size_(size), buffers_(static_cast<size_t>(size)) {
  if (size < 1) throw Error("LocalGroup: needs at least one rank, got " + std::to_string(size));
}

void LocalGroup::abort(const std::string& reason) {
  {
    std::lock_guard lock(mutex_);
    if (abort_reason_.empty()) abort_reason_ = reason.empty() ? "aborted" : reason;
  }
  arrived_.notify_all();
}

std::string LocalGroup::abort_reason() const {
  std::lock_guard lock(mutex_);
  return abort_reason_;
}

void LocalGroup::arrive_and_wait(bool abortable) {
  std::unique_lock lock(mutex_);
  if (abortable && !abort_reason_.empty())
    throw Error("tensor-parallel group aborted: " + abort_reason_);
  const int64_t generation = generation_;
  if (++waiting_ == size_) {
    waiting_ = 0;
    ++generation_;
    arrived_.notify_all();
    return;
  }
  arrived_.wait(lock,
                [&] { return generation_ != generation || (abortable && !abort_reason_.empty()); });
  if (generation_ == generation)  // aborted before every rank arrived
    throw Error("tensor-parallel group aborted: " + abort_reason_);
}

LocalCommunicator::LocalCommunicator(std::shared_ptr<LocalGroup> group, int32_t rank)
    : group_(std::move(group)), rank_(rank) {
  if (!group_ || rank < 0 || rank >= group_->size())
    throw Error("LocalCommunicator: rank " + std::to_string(rank) + " outside its group");
}

void LocalCommunicator::all_reduce_sum(std::span<float> data) {
  LocalGroup& g = *group_;
  sum_.resize(data.size());  // may throw: before this rank's buffer is anyone's to read
  g.buffers_[static_cast<size_t>(rank_)] = data;
  g.arrive_and_wait(/*abortable=*/true);  // every rank's buffer is published
  // Until the next barrier every rank reads the others' buffers, so nothing here may throw (a
  // rank leaving early would free a buffer another still reads), and that barrier waits for
  // every rank even if the group is aborted meanwhile.
  bool same_length = true;
  for (const std::span<float>& b : g.buffers_) same_length &= b.size() == data.size();
  if (same_length) {
    // Each rank sums every buffer in rank order into its own scratch: all read, none writes yet.
    std::copy(g.buffers_[0].begin(), g.buffers_[0].end(), sum_.begin());
    for (size_t r = 1; r < g.buffers_.size(); ++r)
      for (size_t i = 0; i < sum_.size(); ++i) sum_[i] += g.buffers_[r][i];
  }
  g.arrive_and_wait(/*abortable=*/false);  // every rank has read every buffer
  if (!same_length)
    throw Error("all_reduce_sum: the ranks' buffers differ in length (rank " +
                std::to_string(rank_) + " has " + std::to_string(data.size()) + ")");
  std::copy(sum_.begin(), sum_.end(), data.begin());
}

}  // namespace l2kv
