// Diagnostic behind bench/results/2026-12-05-h100-whole-suite/diag/: which output rows of
// WeightStreamGemm differ from a plain launch when it is launched with programmatic dependent
// launch after add_rmsnorm (mode 1), after a host sync (2), after a PDL-launched norm (3).
// Build from the repository root after a Release build:
//   nvcc -std=c++20 -O2 -arch=sm_90a -Isrc bench/experiments/weight_stream_pdl_rows.cu \
//     build/libl2kv_cuda_model.a build/libl2kv_kernels.a build/libl2kv_model.a -lcublasLt -ldl
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "l2kv/core/cuda_check.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/model/weight_stream_gemm.h"
#include "l2kv/kernels/random_fill.h"
using namespace l2kv;
static float bf(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
int main() {
  cudaStream_t s;
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const DType dt = DType::kBFloat16;
  struct Shape {
    const char* name;
    int64_t in, out;
  };
  for (Shape sh : {Shape{"qkv", 4096, 6144}, Shape{"down", 14336, 4096}, Shape{"o", 4096, 4096}})
    for (int64_t rows : {8, 16, 32, 48, 56, 63, 64, 65, 96, 128}) {
      const int64_t in = sh.in, out = sh.out;
      void *w, *nw, *x, *y;
      float* res;
      L2KV_CUDA_CHECK(cudaMalloc(&w, in * out * 2));
      L2KV_CUDA_CHECK(cudaMalloc(&nw, in * 2));
      L2KV_CUDA_CHECK(cudaMalloc(&x, rows * in * 2));
      L2KV_CUDA_CHECK(cudaMalloc(&y, rows * out * 2));
      L2KV_CUDA_CHECK(cudaMalloc(&res, rows * in * 4));
      fill_random(w, in * out, dt, 1.f, 11, nullptr);
      fill_random(nw, in, dt, 1.f, 12, nullptr);
      std::vector<float> rh(rows * in);
      for (size_t i = 0; i < rh.size(); ++i) rh[i] = std::sin(0.37 * i + 1.0);
      L2KV_CUDA_CHECK(cudaMemcpy(res, rh.data(), rh.size() * 4, cudaMemcpyHostToDevice));
      for (int splits : {0, 1}) {
        WeightStreamGemm g;
        g.set_splits(splits);
        auto step = [&](int mode) {  // 0 plain, 1 pdl, 2 pdl after sync, 3 pdl with norm pdl, 4 pdl
                                     // no kernel ahead
          L2KV_CUDA_CHECK(cudaMemsetAsync(x, 0xff, rows * in * 2, s));
          L2KV_CUDA_CHECK(cudaMemsetAsync(y, 0xff, rows * out * 2, s));
          ops::add_rmsnorm(dt, res, nullptr, nw, 1e-5f, rows, in, x, s, mode == 3);
          if (mode == 2) L2KV_CUDA_CHECK(cudaStreamSynchronize(s));
          g.run(dt, x, w, y, false, rows, in, out, s, mode != 0);
          L2KV_CUDA_CHECK(cudaStreamSynchronize(s));
          std::vector<uint16_t> v(rows * out);
          L2KV_CUDA_CHECK(cudaMemcpy(v.data(), y, v.size() * 2, cudaMemcpyDeviceToHost));
          return v;
        };
        auto e = step(0);
        for (int mode : {1, 2, 3, 1}) {
          auto v = step(mode);
          std::string bad;
          int nbad = 0;
          for (int64_t r = 0; r < rows; ++r) {
            int d = 0;
            int nan = 0;
            int zero = 0;
            int eqrow = -1;
            for (int64_t n = 0; n < out; ++n) {
              if (v[r * out + n] != e[r * out + n]) ++d;
              if (std::isnan(bf(v[r * out + n]))) ++nan;
              if (v[r * out + n] == 0 || v[r * out + n] == 0x8000) ++zero;
            }
            if (d) {
              for (int64_t q = 0; q < rows; ++q)
                if (q != r && memcmp(&v[r * out], &e[q * out], out * 2) == 0) eqrow = q;
              ++nbad;
              bad += " r" + std::to_string(r) + "(" + std::to_string(d) + " diff, " +
                     std::to_string(nan) + " nan, " + std::to_string(zero) + " zero, eq_row " +
                     std::to_string(eqrow) + ", v0 " + std::to_string(bf(v[r * out])) + " e0 " +
                     std::to_string(bf(e[r * out])) + ")";
            }
          }
          printf("%s rows=%ld splits=%d(%d) mode=%d: %d bad rows%s\n", sh.name, (long)rows, splits,
                 g.splits_for(rows, in, out), mode, nbad, bad.substr(0, 600).c_str());
        }
      }
      cudaFree(w);
      cudaFree(nw);
      cudaFree(x);
      cudaFree(y);
      cudaFree(res);
    }
  return 0;
}
