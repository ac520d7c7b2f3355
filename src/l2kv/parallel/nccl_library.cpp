#include "l2kv/parallel/nccl_library.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "l2kv/core/error.h"

namespace l2kv {
namespace {

NcclLibrary open_nccl() {
  // Before NCCL reads its environment (at its first communicator).
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  const char* named = std::getenv("L2KV_NCCL_LIBRARY");
  const std::string path = named && *named ? named : "libnccl.so.2";
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    throw Error("tensor parallelism on CUDA needs NCCL: could not open " + path + " (" +
                (why ? why : "unknown error") +
                "); install NCCL (libnccl2) or set L2KV_NCCL_LIBRARY to its libnccl.so.2");
  }
  NcclLibrary lib;
  auto load = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(handle, name));
    if (fn == nullptr) throw Error(path + " has no " + name + " (NCCL 2.7 or later is needed)");
  };
  load(lib.get_unique_id, "ncclGetUniqueId");
  load(lib.comm_init_rank, "ncclCommInitRank");
  load(lib.comm_destroy, "ncclCommDestroy");
  load(lib.comm_abort, "ncclCommAbort");
  load(lib.comm_get_async_error, "ncclCommGetAsyncError");
  load(lib.get_error_string, "ncclGetErrorString");
  load(lib.all_reduce, "ncclAllReduce");
  load(lib.send, "ncclSend");
  load(lib.recv, "ncclRecv");
  load(lib.group_start, "ncclGroupStart");
  load(lib.group_end, "ncclGroupEnd");
  return lib;  // the handle stays open for the process's life
}

}  // namespace

void NcclLibrary::check(ncclResult_t result, const std::string& what) const {
  if (result == ncclSuccess) return;
  throw Error("NCCL: " + what + " failed: " + get_error_string(result));
}

const NcclLibrary& nccl_library() {
  static std::once_flag once;
  static NcclLibrary lib;
  static std::string error;
  std::call_once(once, [] {
    try {
      lib = open_nccl();
    } catch (const Error& e) {
      error = e.what();
    }
  });
  if (!error.empty()) throw Error(error);
  return lib;
}

}  // namespace l2kv
