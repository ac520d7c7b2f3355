// libFuzzer target: a chat template + messages JSON (what it checks: fuzz_entry_points.h).
#include <cstddef>
#include <cstdint>

#include "fuzz_entry_points.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  l2kv::fuzz::run_chat_template(data, size);
  return 0;
}
