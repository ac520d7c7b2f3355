// Shared pieces of l2kv's tests: random paged decode problems on the host, device buffers,
// error metrics, and the skip rule for machines without a GPU.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "l2kv/core/cuda_check.h"
#include "l2kv/kernels/attention/decode_attention.h"
#include "l2kv/kernels/attention/prefill_attention.h"

namespace l2kv::testing {

// Skips a GPU test where there is no GPU, or fails it when L2KV_REQUIRE_GPU=1 (a GPU machine
// must run its GPU tests, never skip them).
#define L2KV_SKIP_WITHOUT_GPU()                                                       \
  do {                                                                                \
    if (!::l2kv::cuda_device_available()) {                                           \
      if (::l2kv::testing::gpu_required()) FAIL() << "L2KV_REQUIRE_GPU=1 but no GPU"; \
      GTEST_SKIP() << "no CUDA GPU: skipped";                                         \
    }                                                                                 \
  } while (0)

// True when L2KV_REQUIRE_GPU=1.
bool gpu_required();

// True when L2KV_TEST_QUICK is set: smaller grids, for runs under compute-sanitizer.
bool quick_mode();

// A device copy of `v` (at least 16 bytes allocated, so empty vectors give a valid pointer);
// the caller frees it with cudaFree.
template <typename T>
T* upload(const std::vector<T>& v) {
  void* ptr = nullptr;
  L2KV_CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(v.size() * sizeof(T), 16)));
  L2KV_CUDA_CHECK(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return static_cast<T*>(ptr);
}

struct DecodeProblemConfig {
  DType dtype = DType::kBFloat16;
  KvLayout layout = KvLayout::kHND;
  int32_t head_dim = 128;
  int32_t num_q_heads = 32;
  int32_t num_kv_heads = 8;
  int32_t block_size = 16;
  std::vector<int32_t> seq_lens;
  int32_t spare_blocks = 7;  // unused blocks scattered through the pool
  uint64_t seed = 1;
  // Logits of random tokens have standard deviation q_scale / 3: 2 gives flat softmaxes (every
  // token counts a little); with kPeakedQScale one token holds most of a row's weight.
  float q_scale = 2.f;
  // Fill the slots no kernel may read (a last block's slots at or beyond the length, and the
  // unused blocks) with poison: K with logit poison_logit() and V = kPoisonValue, so a kernel
  // that reads one moves its rows by O(100). The reference reads only tokens below the length.
  bool poison_unread_slots = true;
  // Tokens that get a needle in every sequence: a K with logit needle_logit() for every query
  // head of its KV group and a V in [-4, 4), so a kernel that drops one is off by O(1).
  // Negative positions count from the end (-1 is the last token); those outside are skipped.
  std::vector<int32_t> needle_positions;
};

inline constexpr float kPeakedQScale = 24.f;
inline constexpr float kPoisonValue = 100.f;     // V of poison slots: finite in fp16 and bf16
inline constexpr float kNeedleValueScale = 4.f;  // needle V: uniform in +-4, random V in +-1

// A random decode problem on the host: values uniform in [-1, 1) (q times q_scale), a
// shuffled pool (each sequence's blocks are scattered, non-contiguous), table padding -1,
// poison and needles as configured (planted after the random fill, which they do not change).
struct DecodeProblem {
  DecodeProblemConfig config;
  std::vector<uint16_t> q, k_pool, v_pool;
  std::vector<int32_t> block_table;
  std::vector<int32_t> unused_blocks;  // physical blocks no sequence's table references
  int32_t num_blocks = 0;
  int32_t max_blocks_per_seq = 0;

  static DecodeProblem make(const DecodeProblemConfig& config);
  // Params whose pointers refer to this object's host vectors.
  DecodeAttentionParams host_params();
  int32_t max_seq_len() const;
  // Element offset in either pool of (physical block, slot, KV head).
  int64_t slot_offset(int32_t physical_block, int32_t slot, int32_t kv_head) const;
  // Element offset in either pool of (sequence, token, KV head); the token may lie beyond the
  // length but must be within the sequence's last block.
  int64_t token_offset(int32_t seq, int32_t token, int32_t kv_head) const;
  // Needle positions of `seq`, ascending, without duplicates.
  std::vector<int32_t> needles_of(int32_t seq) const;
  // A logit above every random token's (8 standard deviations plus the log of the longest
  // length, so a needle outweighs all other tokens together), and the poison's, far above that.
  double needle_logit() const;
  double poison_logit() const;
};

// The smallest k (in L2 norm) with dot(q_rows[h], k) == dot_target for every row h: k =
// Q^T (Q Q^T)^-1 t. Used to give a planted K the same logit for every query head of a group.
std::vector<double> key_with_dot(const std::vector<std::vector<double>>& q_rows, double dot_target);

// The prefill reference's view of `chunks` over a host problem's cache: each query row is a
// decode row over its own prefix (its sequence's block table, length first_position + i + 1).
struct PrefillRows {
  std::vector<int32_t> block_table;
  std::vector<int32_t> lens;
  // `params` (the host problem's) redirected to these rows and the query rows `q`; points into
  // this object, which must outlive its use.
  DecodeAttentionParams reference_params(DecodeAttentionParams params, const void* q) const;
};
PrefillRows prefill_rows(const DecodeProblem& host, const std::vector<PrefillChunk>& chunks);

// Device copies of a problem plus a poisoned output buffer.
class DeviceDecodeProblem {
 public:
  explicit DeviceDecodeProblem(DecodeProblem& host);
  ~DeviceDecodeProblem();
  DeviceDecodeProblem(const DeviceDecodeProblem&) = delete;
  DeviceDecodeProblem& operator=(const DeviceDecodeProblem&) = delete;

  const DecodeAttentionParams& params() const { return params_; }
  // Fills the output with NaN bit patterns so unwritten elements cannot pass.
  void poison_output();
  std::vector<float> download_output() const;

 private:
  DecodeAttentionParams params_;
  std::vector<void*> allocations_;
  size_t out_elems_ = 0;
};

// Per-row error bounds: an output row is the head_dim values of one (sequence or prefill row,
// query head). P and the outputs are rounded to the dtype (unit roundoff 2^-8 in bf16, 2^-11
// in fp16), so a row's relative L2 error is a small multiple of it. Worst rows measured over
// the whole GPU suite on an H200 (2026-11-27): 3.66e-3 (bf16) and 4.53e-4 (fp16).
inline constexpr double kBf16MaxRowRelativeL2 = 5e-3;
inline constexpr double kFp16MaxRowRelativeL2 = 8e-4;
double max_row_relative_l2(DType dtype);

struct RowErrorStats {
  double worst_row_relative_l2 = 0;  // max over rows of ||out - ref|| / ||ref|| (finite values)
  int64_t worst_row = -1;
  double max_abs = 0;
  int64_t non_finite = 0;  // NaN or infinite outputs, plus any length mismatch
};
// Compares rows of `row_len` values; a row whose reference is zero uses its absolute L2 error.
RowErrorStats compare_rows(const std::vector<float>& out, const std::vector<float>& ref,
                           int32_t row_len);

// Checks `out` against `ref` row by row (rows are [num_rows / num_q_heads, num_q_heads,
// head_dim]) with the dtype's bound, and prints one calibration line to stdout:
//   [row-error] <suite.test> <variant> dtype=bf16 worst_row_rel_l2=1.23e-03 bound=5.00e-03
// Fails on any non-finite output or a worst row above the bound.
::testing::AssertionResult rows_match(const std::vector<float>& out, const std::vector<float>& ref,
                                      int32_t head_dim, int32_t num_q_heads, DType dtype,
                                      const std::string& variant);

// Random lengths in [1, max_len], with some forced to block boundaries +-1.
std::vector<int32_t> random_lengths(int32_t batch, int32_t max_len, uint64_t seed);

// Two KV heads of `group` query heads each, in the given dtype, head_dim, block and layout:
// the small shape the kernel grids sweep.
DecodeProblemConfig two_kv_heads_config(DType dtype, int32_t head_dim, int32_t group, int32_t block,
                                        KvLayout layout);

}  // namespace l2kv::testing
