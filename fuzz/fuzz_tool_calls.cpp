// libFuzzer target: a chat output read by the tool-call parsers (what it checks:
// fuzz_entry_points.h).
#include <cstddef>
#include <cstdint>

#include "fuzz_entry_points.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  l2kv::fuzz::run_tool_calls(data, size);
  return 0;
}
