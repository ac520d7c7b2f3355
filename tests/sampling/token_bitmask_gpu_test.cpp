// apply_token_bitmask against its CPU reference (apply_token_bitmask_on_cpu) on random logits
// and random masks: every value equal, unmasked rows untouched, vocabularies that do not fill
// their last mask word included.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/sampling/sampler.h"
#include "l2kv/sampling/token_bitmask.h"

namespace l2kv::testing {
namespace {

TEST(TokenBitmaskGpu, EqualsCpuReference) {
  L2KV_SKIP_WITHOUT_GPU();
  std::mt19937 rng(7);
  for (const int64_t vocab :
       {int64_t{1}, int64_t{31}, int64_t{512}, int64_t{32001}, int64_t{128256}, int64_t{151936}}) {
    const int32_t total_rows = 9;
    const int64_t words = (vocab + 31) / 32;
    std::normal_distribution<float> normal(0.f, 3.f);
    std::vector<float> logits(static_cast<size_t>(total_rows * vocab));
    for (float& v : logits) v = normal(rng);
    // Rows 0, 3, 4 and 8 are constrained, each with a different density of allowed tokens.
    const std::vector<int32_t> rows = {0, 3, 4, 8};
    std::vector<uint32_t> masks(rows.size() * words);
    for (size_t i = 0; i < rows.size(); ++i) {
      const uint32_t keep_one_in = 1u << (2 * i);
      for (int64_t t = 0; t < vocab; ++t)
        if (rng() % keep_one_in == 0) masks[i * words + t / 32] |= 1u << (t % 32);
    }
    std::vector<float> expected = logits;
    for (size_t i = 0; i < rows.size(); ++i)
      apply_token_bitmask_on_cpu(
          std::span<float>(expected).subspan(rows[i] * vocab, static_cast<size_t>(vocab)),
          std::span<const uint32_t>(masks).subspan(i * words, static_cast<size_t>(words)));

    float* d_logits = upload(logits);
    uint32_t* d_masks = upload(masks);
    int32_t* d_rows = upload(rows);
    apply_token_bitmask(d_logits, vocab, d_masks, d_rows, static_cast<int32_t>(rows.size()),
                        nullptr);
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<float> got(logits.size());
    L2KV_CUDA_CHECK(
        cudaMemcpy(got.data(), d_logits, sizeof(float) * got.size(), cudaMemcpyDeviceToHost));
    cudaFree(d_logits);
    cudaFree(d_masks);
    cudaFree(d_rows);
    int64_t mismatches = 0;
    for (size_t k = 0; k < got.size(); ++k) mismatches += !(got[k] == expected[k]);  // -inf == -inf
    EXPECT_EQ(mismatches, 0) << "vocab " << vocab;
  }
}

}  // namespace
}  // namespace l2kv::testing
