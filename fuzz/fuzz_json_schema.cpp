// libFuzzer target: a JSON schema or regex and a text (what it checks: fuzz_entry_points.h).
#include <cstddef>
#include <cstdint>

#include "fuzz_entry_points.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  l2kv::fuzz::run_json_schema(data, size);
  return 0;
}
