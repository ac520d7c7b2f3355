// The collective operations tensor-parallel ranks need, behind one interface so the model code
// does not know whether its ranks are threads of one process (LocalCommunicator) or GPUs.
#pragma once

#include <cstdint>
#include <span>

namespace l2kv {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int32_t rank() const = 0;
  virtual int32_t size() const = 0;
  // Every rank calls it with a buffer of the same length; each gets the element-wise sum over
  // all ranks, added in rank order (so every rank holds the same bits).
  virtual void all_reduce_sum(std::span<float> data) = 0;
};

}  // namespace l2kv
