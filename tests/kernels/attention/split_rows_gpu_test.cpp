// SplitDecode::plan_rows: the split kernel over some sequences of a batch whose query and
// output rows are not their sequence indices (the one-token sequences of a step that also has
// prompt chunks). Each planned sequence's row must hold attention over that sequence's cache
// with the query found at its row; every other row must stay as it was (poisoned).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_reference.h"
#include "l2kv/kernels/attention/split_decode.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;
using testing::DeviceDecodeProblem;

// `graphs`: the split kernel's graph mode (a fixed grid sized for 16 sequences, blocks past
// the plan's items exiting at once), as the engine runs it once its KV pool exists.
void check_rows(DType dtype, const std::vector<int32_t>& seqs, const std::vector<int32_t>& rows,
                bool graphs = false) {
  DecodeProblemConfig c;
  c.dtype = dtype;
  c.seq_lens = {300, 17, testing::quick_mode() ? 1500 : 6000, 64, 129, 1};
  c.seed = 77 + static_cast<uint64_t>(seqs.size());
  auto host = DecodeProblem::make(c);
  // The reference: sequence s attends with the query stored at row rows[i] (s = seqs[i]).
  const size_t row_elems = static_cast<size_t>(c.num_q_heads) * c.head_dim;
  DecodeProblem permuted = host;
  for (size_t i = 0; i < seqs.size(); ++i)
    std::copy_n(host.q.begin() + static_cast<int64_t>(rows[i] * row_elems), row_elems,
                permuted.q.begin() + static_cast<int64_t>(seqs[i] * row_elems));
  const auto reference = decode_attention_reference(permuted.host_params());

  DeviceDecodeProblem device(host);
  device.poison_output();
  SplitDecode split;
  if (graphs) split.reserve_for_graphs(16, device.params());
  split.plan_rows(device.params(), c.seq_lens, seqs, rows, nullptr);
  split.run(device.params(), PrefetchPolicy::off(), nullptr);
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> out = device.download_output();

  std::vector<float> got, want;
  std::vector<bool> written(c.seq_lens.size(), false);
  for (size_t i = 0; i < seqs.size(); ++i) {
    written[static_cast<size_t>(rows[i])] = true;
    const auto at = [&](const std::vector<float>& v, int32_t row) {
      return v.begin() + static_cast<int64_t>(row * row_elems);
    };
    got.insert(got.end(), at(out, rows[i]), at(out, rows[i]) + static_cast<int64_t>(row_elems));
    want.insert(want.end(), at(reference, seqs[i]),
                at(reference, seqs[i]) + static_cast<int64_t>(row_elems));
  }
  EXPECT_TRUE(testing::rows_match(got, want, c.head_dim, c.num_q_heads, dtype,
                                  std::string(dtype_name(dtype)) + " planned rows"));
  for (size_t r = 0; r < written.size(); ++r) {
    if (written[r]) continue;
    int64_t finite = 0;
    for (size_t e = 0; e < row_elems; ++e) finite += std::isfinite(out[r * row_elems + e]) ? 1 : 0;
    EXPECT_EQ(finite, 0) << "row " << r << " is not planned but was written";
  }
}

TEST(SplitDecodeRows, PlansOnlyTheGivenSequencesAtTheirRows) {
  L2KV_SKIP_WITHOUT_GPU();
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16}) {
    check_rows(dtype, {1, 2, 4}, {5, 0, 3});  // a long sequence split into slices, rows moved
    check_rows(dtype, {0, 1, 2, 3, 4, 5}, {0, 1, 2, 3, 4, 5});  // the identity is plan()
    check_rows(dtype, {5}, {2});                                // one sequence of one token
    check_rows(dtype, {1, 2, 4}, {5, 0, 3}, /*graphs=*/true);
  }
}

TEST(SplitDecodeRows, RejectsBadSelections) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.seq_lens = {40, 50, 60};
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  SplitDecode split;
  const std::vector<int32_t> none, one = {0}, two = {0, 1}, descending = {1, 0}, beyond = {3},
                                   negative = {-1}, shared = {1, 1};
  EXPECT_THROW(split.plan_rows(device.params(), c.seq_lens, none, none, nullptr), Error);
  EXPECT_THROW(split.plan_rows(device.params(), c.seq_lens, two, one, nullptr), Error);
  EXPECT_THROW(split.plan_rows(device.params(), c.seq_lens, descending, two, nullptr), Error);
  EXPECT_THROW(split.plan_rows(device.params(), c.seq_lens, beyond, one, nullptr), Error);
  EXPECT_THROW(split.plan_rows(device.params(), c.seq_lens, one, negative, nullptr), Error);
  EXPECT_THROW(split.plan_rows(device.params(), c.seq_lens, two, shared, nullptr), Error);
}

}  // namespace
}  // namespace l2kv
