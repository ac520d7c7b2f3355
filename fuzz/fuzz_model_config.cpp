// libFuzzer target: config.json text (what it checks: fuzz_entry_points.h).
#include <cstddef>
#include <cstdint>

#include "fuzz_entry_points.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  l2kv::fuzz::run_model_config(data, size);
  return 0;
}
