// Marks small functions that host and device code share (layout maps, scale formulas).
#pragma once

#if defined(__CUDACC__)
#define L2KV_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define L2KV_HOST_DEVICE inline
#endif
