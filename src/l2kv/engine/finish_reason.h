// Why a request's output ended, and the name the API and metrics give it.
#pragma once

#include <cstdint>

namespace l2kv {

enum class FinishReason : uint8_t { kNone, kStop, kLength, kAbort, kError };
// "none", "stop", "length", "abort", "error"
const char* finish_reason_name(FinishReason reason);

}  // namespace l2kv
