// l2kv's error type: every invalid input and failed CUDA call becomes one of these, with a
// message that names what was wrong, so front ends can report it without crashing.
#pragma once

#include <stdexcept>
#include <string>

namespace l2kv {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace l2kv
