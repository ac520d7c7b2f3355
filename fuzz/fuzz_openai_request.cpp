// libFuzzer target: an OpenAI request body (what it checks: fuzz_entry_points.h).
#include <cstddef>
#include <cstdint>

#include "fuzz_entry_points.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  l2kv::fuzz::run_openai_request(data, size);
  return 0;
}
