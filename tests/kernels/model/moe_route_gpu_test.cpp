// The router's choice and the grouping by expert on the GPU (moe.h) against a host reference:
// random logits on a grid of 1/8 (so that ties occur, and distinct logits stay distinct
// probabilities on both sides), a row of NaNs, 8 to 1,024 experts, top 1 to 32, with and without
// renormalization; outputs poisoned first. moe_route: the same experts in the same order (ties to
// the lower index), weights within 1e-5 relative (float sums of up to 1,024 terms); a NaN row
// still names k distinct experts.
// moe_group: first[] is the exclusive prefix of the slot counts, active[] the chosen experts
// ascending, each expert's list exactly its slots.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_array.h"
#include "l2kv/kernels/model/moe.h"

namespace l2kv {
namespace {

template <typename T>
std::vector<T> download(const DeviceArray<T>& d, size_t n) {
  std::vector<T> v(n);
  L2KV_CUDA_CHECK(cudaMemcpy(v.data(), d.ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

struct Choice {
  std::vector<int32_t> experts;
  std::vector<float> weights;
};

// Softmax in double, the top k by probability (stable: ties keep the lower index).
Choice reference(const std::vector<float>& row, int32_t k, bool normalize) {
  const double top = *std::max_element(row.begin(), row.end());
  std::vector<double> p(row.size());
  double sum = 0;
  for (size_t e = 0; e < row.size(); ++e) sum += p[e] = std::exp(double{row[e]} - top);
  for (double& x : p) x /= sum;
  std::vector<int32_t> order(row.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  Choice c;
  double chosen = 0;
  for (int32_t j = 0; j < k; ++j) chosen += p[order[j]];
  for (int32_t j = 0; j < k; ++j) {
    c.experts.push_back(order[j]);
    c.weights.push_back(static_cast<float>(normalize ? p[order[j]] / chosen : p[order[j]]));
  }
  return c;
}

TEST(MoeRouteGpu, ChoosesAndGroupsAsTheHostReference) {
  L2KV_SKIP_WITHOUT_GPU();
  std::mt19937_64 rng(77);
  for (const int32_t E : {8, 128, 160, 1024})
    for (const int32_t K : {1, 2, 8, 32})
      for (const int32_t tokens : {1, 5, 64})
        for (const bool normalize : {true, false}) {
          if (K > E) continue;
          SCOPED_TRACE("experts " + std::to_string(E) + " top " + std::to_string(K) + " tokens " +
                       std::to_string(tokens) + (normalize ? " normalized" : ""));
          std::uniform_int_distribution<int> grid(-24, 24);  // logits in steps of 1/8: ties
          std::vector<float> logits(static_cast<size_t>(tokens) * E);
          for (float& x : logits) x = static_cast<float>(grid(rng)) / 8.f;
          const int32_t nan_row = tokens > 1 ? tokens / 2 : -1;
          if (nan_row >= 0) std::fill_n(logits.begin() + int64_t{nan_row} * E, E, std::nanf(""));
          float* d_logits = testing::upload(logits);
          const int32_t slots = tokens * K;
          DeviceArray<int32_t> experts(static_cast<size_t>(slots)), first(size_t(E) + 1),
              by_expert(static_cast<size_t>(slots)), active(size_t(E) + 1);
          DeviceArray<float> weights(static_cast<size_t>(slots));
          // Poisoned outputs (0x7f7f7f7f: no expert, no slot, a huge weight).
          L2KV_CUDA_CHECK(cudaMemset(experts.ptr, 0x7f, size_t(slots) * 4));
          L2KV_CUDA_CHECK(cudaMemset(weights.ptr, 0x7f, size_t(slots) * 4));
          L2KV_CUDA_CHECK(cudaMemset(first.ptr, 0x7f, (size_t(E) + 1) * 4));
          L2KV_CUDA_CHECK(cudaMemset(active.ptr, 0x7f, (size_t(E) + 1) * 4));
          L2KV_CUDA_CHECK(cudaMemset(by_expert.ptr, 0x7f, size_t(slots) * 4));
          ops::moe_route(d_logits, tokens, E, K, normalize, experts.ptr, weights.ptr, nullptr);
          ops::moe_group(experts.ptr, slots, E, first.ptr, by_expert.ptr, active.ptr, nullptr);
          L2KV_CUDA_CHECK(cudaDeviceSynchronize());
          cudaFree(d_logits);
          const auto got_e = download(experts, size_t(slots));
          const auto got_w = download(weights, size_t(slots));
          int64_t bad = 0;
          for (int32_t t = 0; t < tokens; ++t) {
            if (t == nan_row) {  // any k distinct experts (the expert outputs will be NaN)
              std::vector<int32_t> ids(got_e.begin() + int64_t{t} * K,
                                       got_e.begin() + int64_t{t + 1} * K);
              std::sort(ids.begin(), ids.end());
              EXPECT_TRUE(std::adjacent_find(ids.begin(), ids.end()) == ids.end());
              EXPECT_GE(ids.front(), 0);
              EXPECT_LT(ids.back(), E);
              continue;
            }
            const Choice want = reference(std::vector<float>(logits.begin() + int64_t{t} * E,
                                                             logits.begin() + int64_t{t + 1} * E),
                                          K, normalize);
            for (int32_t j = 0; j < K; ++j) {
              const size_t s = size_t(t) * K + j;
              if ((got_e[s] != want.experts[j] ||
                   !(std::abs(got_w[s] - want.weights[j]) <= 1e-5f * want.weights[j])) &&
                  bad++ < 3)
                ADD_FAILURE() << "token " << t << " choice " << j << ": expert " << got_e[s]
                              << " weight " << got_w[s] << ", expected " << want.experts[j]
                              << " weight " << want.weights[j];
            }
          }
          EXPECT_EQ(bad, 0);
          // The grouping, from the experts the GPU chose.
          const auto got_first = download(first, size_t(E) + 1);
          const auto got_active = download(active, size_t(E) + 1);
          const auto got_by = download(by_expert, size_t(slots));
          for (const int32_t e : got_e) ASSERT_TRUE(e >= 0 && e < E) << "expert " << e;
          std::vector<int32_t> count(static_cast<size_t>(E), 0), want_active;
          for (const int32_t e : got_e) ++count[static_cast<size_t>(e)];
          int32_t prefix = 0;
          for (int32_t e = 0; e <= E; ++e) {
            ASSERT_EQ(got_first[size_t(e)], prefix) << "first[" << e << "]";
            if (e < E) {
              if (count[size_t(e)] > 0) want_active.push_back(e);
              prefix += count[size_t(e)];
            }
          }
          ASSERT_EQ(got_active[0], static_cast<int32_t>(want_active.size()));
          for (size_t i = 0; i < want_active.size(); ++i)
            ASSERT_EQ(got_active[1 + i], want_active[i]) << "active[" << 1 + i << "]";
          std::vector<int32_t> seen(size_t(slots), 0);
          for (int32_t e = 0; e < E; ++e)
            for (int32_t i = got_first[size_t(e)]; i < got_first[size_t(e) + 1]; ++i) {
              const int32_t s = got_by[size_t(i)];
              ASSERT_TRUE(s >= 0 && s < slots) << "slot " << s;
              ASSERT_EQ(got_e[size_t(s)], e) << "slot " << s << " listed under expert " << e;
              ++seen[size_t(s)];
            }
          EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), slots) << "each slot listed once";
        }
}

}  // namespace
}  // namespace l2kv
