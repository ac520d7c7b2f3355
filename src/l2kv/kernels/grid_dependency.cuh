// Programmatic dependent launch (sm_90): a kernel launched with
// cudaLaunchAttributeProgrammaticStreamSerialization may start before the kernel ahead of it in
// the stream has finished. It must call grid_dependency_wait() before it reads anything that
// kernel writes; the kernel ahead calls launch_dependents() to let it start early. Both are
// no-ops when the launch did not ask for programmatic serialization.
#pragma once

namespace l2kv::ptx {

// Blocks until every grid this one depends on has completed and its writes are visible.
__device__ __forceinline__ void grid_dependency_wait() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
}

// Lets the next kernel in the stream, if launched with programmatic serialization, start now.
__device__ __forceinline__ void launch_dependents() {
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

}  // namespace l2kv::ptx
