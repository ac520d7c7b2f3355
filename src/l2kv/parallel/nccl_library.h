// NCCL, opened at run time: l2kv runs a model on one GPU on machines without NCCL, and only
// --tensor-parallel-size > 1 needs libnccl.so.2 (found on the library path, or named by
// L2KV_NCCL_LIBRARY). nccl.h gives the types; the functions come from the library.
#pragma once

#include <nccl.h>

#include <string>

namespace l2kv {

struct NcclLibrary {
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclCommGetAsyncError) comm_get_async_error = nullptr;
  decltype(&ncclGetErrorString) get_error_string = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;

  // Throws l2kv::Error naming `what` and NCCL's message when `result` is not ncclSuccess.
  void check(ncclResult_t result, const std::string& what) const;
};

// The process's NCCL, opened on the first call (later calls return the same one). Throws
// l2kv::Error saying where it looked when the library or one of its functions is missing.
// Sets NCCL_NVLS_ENABLE=0 first: l2kv never uses NVLink multicast (NVLS), which can take a
// host's GPUs out of service when it fails.
const NcclLibrary& nccl_library();

}  // namespace l2kv
