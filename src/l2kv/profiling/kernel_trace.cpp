#include "l2kv/profiling/kernel_trace.h"

#include <cupti_activity.h>
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

constexpr size_t kBufferBytes = 8 << 20;
constexpr size_t kRecordAlign = 8;  // CUPTI wants its activity buffers 8-byte aligned

// The CUPTI entry points a trace uses, resolved from the loaded library.
struct CuptiApi {
  void* library = nullptr;
  CUptiResult (*register_callbacks)(CUpti_BuffersCallbackRequestFunc,
                                    CUpti_BuffersCallbackCompleteFunc) = nullptr;
  CUptiResult (*enable)(CUpti_ActivityKind) = nullptr;
  CUptiResult (*disable)(CUpti_ActivityKind) = nullptr;
  CUptiResult (*flush_all)(uint32_t) = nullptr;
  CUptiResult (*next_record)(uint8_t*, size_t, CUpti_Activity**) = nullptr;
};

// Records arrive on CUPTI's callbacks, which take no user pointer: one trace per process.
std::mutex records_mutex;
std::vector<KernelInterval>* active_records = nullptr;
CuptiApi* active_api = nullptr;

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(kRecordAlign, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  {
    std::lock_guard lock(records_mutex);
    CUpti_Activity* record = nullptr;
    while (active_api && active_records &&
           active_api->next_record(buffer, valid, &record) == CUPTI_SUCCESS) {
      if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      active_records->push_back({k->name ? k->name : "?", k->start, k->end});
    }
  }
  std::free(buffer);
}

template <typename F>
void resolve(void* library, const char* symbol, F& fn) {
  fn = reinterpret_cast<F>(dlsym(library, symbol));
  if (!fn) throw Error(std::string("profile: libcupti has no ") + symbol);
}

void check(CUptiResult r, const char* what) {
  if (r != CUPTI_SUCCESS)
    throw Error(std::string("profile: ") + what + " failed (CUPTI error " + std::to_string(r) +
                ")");
}

}  // namespace

struct KernelTrace::Impl {
  CuptiApi api;
  std::vector<KernelInterval> records;
};

KernelTrace::KernelTrace() : impl_(std::make_unique<Impl>()) {
  std::lock_guard lock(records_mutex);
  if (active_records) throw Error("profile: only one kernel trace at a time");
  const char* path = std::getenv("L2KV_CUPTI_PATH");
  for (const char* name : {path, "libcupti.so.13", "libcupti.so"}) {
    if (name && (impl_->api.library = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
  }
  if (!impl_->api.library)
    throw Error(
        "profile: cannot load CUPTI (libcupti.so.13); it ships with the CUDA toolkit "
        "(e.g. /usr/local/cuda/lib64 or extras/CUPTI/lib64): add its folder to LD_LIBRARY_PATH "
        "or set L2KV_CUPTI_PATH to the library");
  CuptiApi& a = impl_->api;
  resolve(a.library, "cuptiActivityRegisterCallbacks", a.register_callbacks);
  resolve(a.library, "cuptiActivityEnable", a.enable);
  resolve(a.library, "cuptiActivityDisable", a.disable);
  resolve(a.library, "cuptiActivityFlushAll", a.flush_all);
  resolve(a.library, "cuptiActivityGetNextRecord", a.next_record);
  active_records = &impl_->records;
  active_api = &impl_->api;
  try {
    check(a.register_callbacks(buffer_requested, buffer_completed),
          "cuptiActivityRegisterCallbacks");
    check(a.enable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "enabling kernel records");
  } catch (...) {
    active_records = nullptr;
    active_api = nullptr;
    throw;
  }
}

KernelTrace::~KernelTrace() {
  impl_->api.disable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  impl_->api.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard lock(records_mutex);
  active_records = nullptr;
  active_api = nullptr;
  // The library stays loaded: CUPTI keeps threads and hooks in the CUDA runtime.
}

void KernelTrace::clear() {
  check(impl_->api.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "flushing kernel records");
  std::lock_guard lock(records_mutex);
  impl_->records.clear();
}

std::vector<KernelInterval> KernelTrace::collect() {
  check(impl_->api.flush_all(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "flushing kernel records");
  std::lock_guard lock(records_mutex);
  return std::move(impl_->records);
}

}  // namespace l2kv
