// l2kv's error type: every invalid input and failed CUDA call becomes one of these, with a
// message that names what was wrong, so front ends can report it without crashing.
#pragma once

#include <exception>
#include <stdexcept>
#include <string>

namespace l2kv {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

// What the exception in flight says (call it inside a catch block).
inline std::string describe_current_exception() {
  try {
    throw;
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an exception that is not a std::exception";
  }
}

}  // namespace l2kv
