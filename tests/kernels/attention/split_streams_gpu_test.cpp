// One SplitDecode run on two streams back to back: the runs share the workspace (partials and
// arrival counters), so the second must wait for the first; both outputs must be right.
#include <gtest/gtest.h>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_reference.h"
#include "l2kv/kernels/attention/split_decode.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;
using testing::DeviceDecodeProblem;

TEST(SplitDecodeStreams, RunsOnTwoStreamsDoNotShareTheWorkspaceAtOnce) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.seq_lens = {testing::quick_mode() ? 3000 : 20000, 5000, 17};  // split into many slices
  auto host = DecodeProblem::make(c);
  const auto reference = decode_attention_reference(host.host_params());
  DeviceDecodeProblem first(host), second(host);
  cudaStream_t a = nullptr, b = nullptr;
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking));
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking));
  SplitDecode split;
  split.plan(first.params(), c.seq_lens, a);
  for (int round = 0; round < 5; ++round) {
    first.poison_output();
    second.poison_output();
    split.run(first.params(), PrefetchPolicy::off(), a);
    split.run(second.params(), PrefetchPolicy::off(), b);
    L2KV_CUDA_CHECK(cudaStreamSynchronize(a));
    L2KV_CUDA_CHECK(cudaStreamSynchronize(b));
    for (const DeviceDecodeProblem* d : {&first, &second})
      EXPECT_TRUE(testing::rows_match(d->download_output(), reference, c.head_dim, c.num_q_heads,
                                      c.dtype, "round " + std::to_string(round)));
  }
  cudaStreamDestroy(a);
  cudaStreamDestroy(b);
}

}  // namespace
}  // namespace l2kv
