// The split kernel with programmatic dependent launch (+pdl) right behind the RoPE + KV-write
// kernel that produces its Q and each sequence's newest K/V, itself launched the same way behind
// the kernel that writes its QKV rows, as in a decode step: the output must match the
// reference, so each kernel read its inputs only after its wait (they are poisoned before).
// RoPE at position 0 is the identity, so the QKV rows carry the problem's own Q and newest K/V.
#include <gtest/gtest.h>

#include <vector>

#include "gpu_test_support.h"
#include "l2kv/kernels/attention/decode_reference.h"
#include "l2kv/kernels/attention/split_decode.h"
#include "l2kv/kernels/model/model_ops.h"

namespace l2kv {
namespace {

using testing::DecodeProblem;
using testing::DecodeProblemConfig;
using testing::DeviceDecodeProblem;
using testing::upload;

TEST(SplitDecodePdl, ReadsQAndTheNewestKvOnlyAfterTheRopeKernel) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;  // Llama-3-8B heads, bf16, HND, block 16
  c.seq_lens = testing::random_lengths(testing::quick_mode() ? 4 : 24, 3000, 77);
  c.seq_lens[0] = 1;  // nothing but the newest token
  auto host = DecodeProblem::make(c);
  const auto reference = decode_attention_reference(host.host_params());
  DeviceDecodeProblem device(host);
  const DecodeAttentionParams params = device.params();
  const PagedKvCache& kv = params.kv;
  const int32_t batch = kv.batch_size, d = kv.head_dim;
  const int32_t q_dim = c.num_q_heads * d, kv_dim = kv.num_kv_heads * d;

  // QKV rows [q | k | v] of each sequence's newest token, and where that token lives.
  std::vector<uint16_t> qkv(static_cast<size_t>(batch) * (q_dim + 2 * kv_dim));
  std::vector<int32_t> positions(batch, 0), slots(batch);
  std::vector<int64_t> newest_offsets;  // element offsets of the newest K/V rows, per head
  for (int32_t s = 0; s < batch; ++s) {
    const int32_t token = c.seq_lens[s] - 1;
    const int32_t block =
        host.block_table[static_cast<size_t>(s) * host.max_blocks_per_seq + token / c.block_size];
    slots[s] = block * c.block_size + token % c.block_size;
    uint16_t* row = qkv.data() + static_cast<size_t>(s) * (q_dim + 2 * kv_dim);
    std::copy_n(host.q.begin() + static_cast<int64_t>(s) * q_dim, q_dim, row);
    for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
      const int64_t off = kv.offset(block, token % c.block_size, h);
      newest_offsets.push_back(off);
      std::copy_n(host.k_pool.begin() + off, d, row + q_dim + h * d);
      std::copy_n(host.v_pool.begin() + off, d, row + q_dim + kv_dim + h * d);
    }
  }
  int32_t* positions_d = upload(positions);
  int32_t* slots_d = upload(slots);
  float* inv_freq_d = upload(std::vector<float>(d / 2, 1.f));
  uint16_t* staged_d = upload(qkv);  // copied into qkv_d by a kernel each step
  uint16_t* qkv_d = upload(qkv);
  std::vector<int32_t> identity(batch);
  for (int32_t s = 0; s < batch; ++s) identity[s] = s;
  int32_t* identity_d = upload(identity);
  const int32_t width = q_dim + 2 * kv_dim;
  cudaStream_t stream = nullptr;
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  auto poison_inputs = [&] {  // NaN in the QKV rows and where the RoPE kernel writes
    L2KV_CUDA_CHECK(cudaMemsetAsync(qkv_d, 0xff, qkv.size() * 2, stream));
    L2KV_CUDA_CHECK(cudaMemsetAsync(const_cast<void*>(params.q), 0xff,
                                    static_cast<size_t>(batch) * q_dim * 2, stream));
    for (int64_t off : newest_offsets) {
      L2KV_CUDA_CHECK(
          cudaMemsetAsync(static_cast<uint16_t*>(kv.k_pool) + off, 0xff, d * 2, stream));
      L2KV_CUDA_CHECK(
          cudaMemsetAsync(static_cast<uint16_t*>(kv.v_pool) + off, 0xff, d * 2, stream));
    }
  };
  // As in a decode step: a kernel writes the QKV rows (the projection; here a row copy), the
  // RoPE kernel follows with programmatic dependent launch too, then the split kernel.
  auto step = [&](SplitDecode& split, const PrefetchPolicy& policy) {
    ops::gather_rows(staged_d, identity_d, batch, width, qkv_d, stream);
    ops::rope_and_cache(qkv_d, nullptr, positions_d, slots_d, inv_freq_d, batch, c.num_q_heads, kv,
                        const_cast<void*>(params.q), stream, /*pdl=*/true);
    split.run(params, policy, stream);
  };

  for (const char* name : {"off+pdl", "on:2+pdl", "auto+stream+pdl"}) {
    for (const bool graph : {false, true}) {
      SCOPED_TRACE(std::string(name) + (graph ? " in a CUDA graph" : " eager"));
      const PrefetchPolicy policy = parse_prefetch_policy(name);
      SplitDecode split;
      if (graph) split.reserve_for_graphs(batch, params);
      split.plan(params, c.seq_lens, stream);
      for (int repeat = 0; repeat < 3; ++repeat) {
        device.poison_output();
        poison_inputs();
        if (graph) {
          cudaGraph_t g = nullptr;
          cudaGraphExec_t exec = nullptr;
          L2KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
          step(split, policy);
          L2KV_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
          L2KV_CUDA_CHECK(cudaGraphInstantiate(&exec, g, 0));
          L2KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
          L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
          cudaGraphExecDestroy(exec);
          cudaGraphDestroy(g);
        } else {
          step(split, policy);
        }
        L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
        EXPECT_TRUE(testing::rows_match(device.download_output(), reference, d, c.num_q_heads,
                                        c.dtype, name));
      }
    }
  }
  for (void* p : {static_cast<void*>(positions_d), static_cast<void*>(slots_d),
                  static_cast<void*>(inv_freq_d), static_cast<void*>(qkv_d),
                  static_cast<void*>(staged_d), static_cast<void*>(identity_d)})
    cudaFree(p);
  cudaStreamDestroy(stream);
}

TEST(SplitDecodePdl, PagedV1RefusesPdl) {
  L2KV_SKIP_WITHOUT_GPU();
  DecodeProblemConfig c;
  c.seq_lens = {5, 9};
  auto host = DecodeProblem::make(c);
  DeviceDecodeProblem device(host);
  EXPECT_THROW(paged_v1_decode(device.params(), parse_prefetch_policy("on+pdl"), nullptr), Error);
}

}  // namespace
}  // namespace l2kv
