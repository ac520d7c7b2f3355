// Tensor parallelism on the CPU backend: how a model splits over ranks (tp_shard), the
// thread-local all-reduce, slices read from safetensors, and the sharded forward of every dense
// fixture at 2 and 4 ranks (4 keeps each KV head on two ranks) against the whole model: logits
// within float32 summation noise, and the ranks' logits identical to each other.
#include "l2kv/parallel/tensor_parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "l2kv/core/error.h"
#include "l2kv/model/cpu_model.h"
#include "l2kv/model/model_config.h"
#include "l2kv/model/safetensors.h"
#include "l2kv/parallel/local_communicator.h"
#include "model/tiny_checkpoint.h"

namespace l2kv {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(L2KV_TEST_SOURCE_DIR) / "model" / "fixtures";

ModelConfig llama3_8b_shape() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.num_q_heads = 32;
  c.num_kv_heads = 8;
  c.head_dim = 128;
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.vocab_size = 128257;  // odd on purpose: the vocabulary may split unevenly
  return c;
}

TEST(TpShard, SplitsHeadsFeaturesAndVocabularyInContiguousRanges) {
  const ModelConfig c = llama3_8b_shape();
  for (const int32_t size : {1, 2, 4, 8}) {
    int64_t vocab = 0;
    for (int32_t r = 0; r < size; ++r) {
      const TpShard s = tp_shard(c, r, size);
      EXPECT_EQ(s.q_heads, 32 / size);
      EXPECT_EQ(s.q_head_begin, r * (32 / size));
      EXPECT_EQ(s.kv_heads, 8 / size);
      EXPECT_EQ(s.kv_head_begin, r * (8 / size));
      // The rank's q heads use exactly its KV heads (4 q heads per KV head).
      EXPECT_EQ(s.q_head_begin / 4, s.kv_head_begin);
      EXPECT_EQ(s.inter, 14336 / size);
      EXPECT_EQ(s.inter_begin, r * (14336 / size));
      EXPECT_EQ(s.vocab_begin, vocab) << "size " << size << " rank " << r;
      vocab += s.vocab;
    }
    EXPECT_EQ(vocab, c.vocab_size) << "size " << size << ": the ranks' vocabularies must tile it";
  }
  // 16 ranks, 8 KV heads: ranks 2k and 2k + 1 keep KV head k, and their q heads belong to it.
  for (int32_t r = 0; r < 16; ++r) {
    const TpShard s = tp_shard(c, r, 16);
    EXPECT_EQ(s.kv_heads, 1);
    EXPECT_EQ(s.kv_head_begin, r / 2);
    EXPECT_EQ(s.q_head_begin / 4, r / 2);
    EXPECT_EQ((s.q_head_begin + s.q_heads - 1) / 4, r / 2);
  }
}

TEST(TpShard, RefusesWhatDoesNotSplit) {
  const ModelConfig c = llama3_8b_shape();
  auto message = [&](const ModelConfig& config, int32_t rank, int32_t size) {
    try {
      tp_shard(config, rank, size);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message(c, 0, 3).find("32 attention heads do not divide"), std::string::npos);
  EXPECT_NE(message(c, 2, 2).find("rank 2 is outside"), std::string::npos);
  EXPECT_NE(message(c, 0, 0).find("at least one rank"), std::string::npos);
  ModelConfig kv3 = c;
  kv3.num_q_heads = 48, kv3.num_kv_heads = 3;  // 2 ranks: 3 KV heads neither split nor repeat
  EXPECT_NE(message(kv3, 0, 2).find("3 KV heads"), std::string::npos);
  ModelConfig odd_mlp = c;
  odd_mlp.intermediate_size = 14338;
  EXPECT_NE(message(odd_mlp, 0, 4).find("14338 features"), std::string::npos);
  ModelConfig moe = c;
  moe.num_experts = 8;
  EXPECT_NE(message(moe, 0, 2).find("not covered yet"), std::string::npos);
}

TEST(LocalCommunicator, SumsInRankOrderOnEveryRank) {
  constexpr int32_t kRanks = 4;
  auto group = std::make_shared<LocalGroup>(kRanks);
  std::vector<std::vector<float>> data(kRanks);
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < kRanks; ++r)
    threads.emplace_back([&, r] {
      LocalCommunicator comm(group, r);
      for (int round = 0; round < 3; ++round) {  // the group is reused call after call
        std::vector<float> v = {1.f * r, 1e8f * (r == 0 ? 1.f : 0.f), 1.f, -0.5f * r};
        comm.all_reduce_sum(v);
        if (round == 2) data[static_cast<size_t>(r)] = v;
      }
    });
  for (std::thread& t : threads) t.join();
  // Rank order: 1e8 + 0 + 0 + 0 and 0 + 1 + 2 + 3; 1 four times; -(0 + 0.5 + 1 + 1.5).
  for (const auto& v : data) EXPECT_EQ(v, (std::vector<float>{6.f, 1e8f, 4.f, -3.f}));
}

TEST(LocalCommunicator, UnequalLengthsThrowOnEveryRank) {
  auto group = std::make_shared<LocalGroup>(2);
  int errors = 0;
  std::vector<std::thread> threads;
  std::mutex m;
  for (int32_t r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      LocalCommunicator comm(group, r);
      std::vector<float> v(static_cast<size_t>(3 + r), 1.f);
      try {
        comm.all_reduce_sum(v);
      } catch (const Error&) {
        std::lock_guard lock(m);
        ++errors;
      }
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(errors, 2);
}

// Ranks 0 and 2 wait in an all-reduce that rank 1 never joins; the group is aborted on rank 1's
// behalf: both are released with its reason, and a later collective throws at once.
TEST(LocalCommunicator, AnAbortedGroupReleasesEveryRankWithTheReason) {
  auto group = std::make_shared<LocalGroup>(3);
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (const int32_t r : {0, 2})
    threads.emplace_back([&, r] {
      LocalCommunicator comm(group, r);
      std::vector<float> v(4, 1.f);
      try {
        comm.all_reduce_sum(v);
      } catch (const Error& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // both are waiting by then
  group->abort("rank 1: out of memory");
  for (std::thread& t : threads) t.join();
  EXPECT_NE(errors[0].find("rank 1: out of memory"), std::string::npos) << errors[0];
  EXPECT_NE(errors[2].find("rank 1: out of memory"), std::string::npos) << errors[2];
  EXPECT_EQ(group->abort_reason(), "rank 1: out of memory");
  LocalCommunicator late(group, 1);
  std::vector<float> v(4, 1.f);
  EXPECT_THROW(late.all_reduce_sum(v), Error);
}

TEST(TensorViewSlice, ReadsRowsAndColumnsOfEachDtype) {
  // A 3 x 5 tensor in F32, BF16 and F8_E4M3 (values exact in all three).
  const std::vector<float> values = {0,    1,    2,  3,  4,  0.5f, 1.5f, 2.5f,
                                     3.5f, 4.5f, -1, -2, -3, -4,   -6};
  std::vector<uint8_t> f32(values.size() * 4), bf16(values.size() * 2), fp8(values.size());
  std::memcpy(f32.data(), values.data(), f32.size());
  for (size_t i = 0; i < values.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &values[i], 4);
    const auto top = static_cast<uint16_t>(bits >> 16);
    std::memcpy(bf16.data() + 2 * i, &top, 2);
  }
  // E4M3 codes of the same values: sign, 4 exponent bits (bias 7), 3 mantissa bits.
  auto e4m3 = [](float v) -> uint8_t {
    if (v == 0) return 0;
    const uint8_t sign = v < 0 ? 0x80 : 0;
    const float a = std::fabs(v);
    const int e = static_cast<int>(std::floor(std::log2(a)));
    const auto mantissa = static_cast<uint8_t>(std::lround((a / std::ldexp(1.f, e) - 1) * 8));
    return static_cast<uint8_t>(sign | ((e + 7) << 3) | mantissa);
  };
  for (size_t i = 0; i < values.size(); ++i) fp8[i] = e4m3(values[i]);
  for (const auto& [dtype, bytes] :
       {std::pair{TensorDType::kF32, &f32}, std::pair{TensorDType::kBF16, &bf16},
        std::pair{TensorDType::kF8E4M3, &fp8}}) {
    TensorView t;
    t.name = "w";
    t.dtype = dtype;
    t.shape = {3, 5};
    t.data = bytes->data();
    t.bytes = bytes->size();
    EXPECT_EQ(t.to_float(1, 2, 1, 3), (std::vector<float>{1.5f, 2.5f, 3.5f, -2, -3, -4}));
    EXPECT_EQ(t.to_float(0, 3, 4, 1), (std::vector<float>{4, 4.5f, -6}));
    EXPECT_EQ(t.to_float(0, 3, 0, 5), values);
    EXPECT_THROW(t.to_float(2, 2, 0, 1), Error) << "rows past the end";
    EXPECT_THROW(t.to_float(0, 1, 3, 3), Error) << "columns past the end";
    if (dtype == TensorDType::kF8E4M3)
      EXPECT_EQ(t.bytes_of(1, 1, 2, 2), (std::vector<uint8_t>{e4m3(2.5f), e4m3(3.5f)}));
    else
      EXPECT_THROW(t.bytes_of(0, 1, 0, 1), Error) << "bytes of a 16/32-bit tensor";
  }
  TensorView bias;  // 1-D: one row
  bias.dtype = TensorDType::kF32;
  bias.shape = {5};
  bias.data = f32.data();
  EXPECT_EQ(bias.to_float(0, 1, 2, 2), (std::vector<float>{2, 3}));
}

// Every rank's logits of `steps` (a prompt, then single tokens) as the whole model's are made.
std::vector<std::vector<std::vector<float>>> sharded_logits(
    const fs::path& folder, int32_t size, const std::vector<std::vector<int32_t>>& steps) {
  auto group = std::make_shared<LocalGroup>(size);
  std::vector<std::vector<std::vector<float>>> out(static_cast<size_t>(size));
  std::vector<std::string> errors(static_cast<size_t>(size));
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < size; ++r)
    threads.emplace_back([&, r] {
      try {
        LocalCommunicator comm(group, r);
        const CpuModel model(folder, comm);
        CpuSequenceState state;
        for (const auto& tokens : steps)
          out[static_cast<size_t>(r)].push_back(model.extend(state, tokens));
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  for (std::thread& t : threads) t.join();
  for (const std::string& e : errors) EXPECT_EQ(e, "");
  return out;
}

// Rank 0's logits of each step against the whole model's. Only the order of float32 sums differs
// (per rank, then across ranks): a few ulps of the logits' scale. A wrong slice or a missing
// partial sum moves logits by O(1).
void expect_whole_model_logits(const std::vector<std::vector<float>>& got,
                               const std::vector<std::vector<float>>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t s = 0; s < want.size(); ++s) {
    ASSERT_EQ(got[s].size(), want[s].size());
    float scale = 0.f, worst = 0.f;
    size_t non_finite = 0;  // std::max would drop a NaN
    for (size_t i = 0; i < want[s].size(); ++i) {
      if (!std::isfinite(got[s][i]) || !std::isfinite(want[s][i])) {
        ++non_finite;
        continue;
      }
      scale = std::max(scale, std::fabs(want[s][i]));
      worst = std::max(worst, std::fabs(got[s][i] - want[s][i]));
    }
    EXPECT_EQ(non_finite, 0u) << "step " << s;
    EXPECT_LE(worst, 2e-5f * std::max(scale, 1.f))
        << "step " << s << " (logit scale " << scale << ")";
  }
}

class TensorParallelCpu : public ::testing::TestWithParam<std::string> {};

TEST_P(TensorParallelCpu, ShardedForwardMatchesTheWholeModel) {
  const fs::path folder = kFixtures / GetParam();
  const CpuModel whole(folder);
  const ModelConfig& c = whole.config();
  // A 23-token prompt, then three decode steps fed the whole model's greedy tokens.
  std::vector<std::vector<int32_t>> steps = {{}};
  for (int32_t i = 0; i < 23; ++i)
    steps[0].push_back(static_cast<int32_t>((i * 37 + 11) % c.vocab_size));
  std::vector<std::vector<float>> want;
  CpuSequenceState state;
  for (int step = 0; step < 4; ++step) {
    want.push_back(whole.extend(state, steps.back()));
    const float* last = want.back().data() + want.back().size() - c.vocab_size;
    const auto next = static_cast<int32_t>(std::max_element(last, last + c.vocab_size) - last);
    if (step < 3) steps.push_back({next});
  }
  for (const int32_t size : {2, 4}) {
    SCOPED_TRACE(GetParam() + " over " + std::to_string(size) + " ranks");
    const auto got = sharded_logits(folder, size, steps);
    for (int32_t r = 0; r < size; ++r) {
      ASSERT_EQ(got[static_cast<size_t>(r)].size(), want.size());
      EXPECT_EQ(got[static_cast<size_t>(r)], got[0]) << "rank " << r << " differs from rank 0";
    }
    expect_whole_model_logits(got[0], want);
  }
}

INSTANTIATE_TEST_SUITE_P(DenseFixtures, TensorParallelCpu,
                         ::testing::Values("llama2-mha", "llama3-gqa", "llama3-hd128", "qwen2-tied",
                                           "qwen3-qknorm"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// A tiny Qwen3 with fp8 weights (per-channel and per-tensor scales), 8 q heads over 2 KV heads
// and an odd vocabulary: at 2 ranks each rank holds one KV head for four q heads, at 4 ranks two
// ranks share each KV head, and the 41 logits split 10 / 10 / 10 / 11.
TEST(TensorParallelCpu, Fp8WeightsSharedKvHeadsAndAnUnevenVocabulary) {
  const testing::TinyQwen3 m = testing::tiny_qwen3(31, 32, 8, 2, 8, 2, 41, 48);
  const fs::path dir = fs::path(::testing::TempDir()) / "l2kv_tp_tiny_fp8";
  const std::vector<std::vector<int32_t>> steps = {{1, 5, 9, 15, 0, 3, 3, 12, 7, 40}, {17}, {33}};
  for (const bool per_channel : {true, false}) {
    SCOPED_TRACE(per_channel ? "per-channel scales" : "per-tensor scale");
    const testing::Fp8Twins t = testing::fp8_twins(m.config, m.tensors, per_channel);
    testing::write_tiny_checkpoint(dir, t.config, t.quantized);
    const CpuModel whole(dir);
    ASSERT_TRUE(whole.config().fp8_weights);
    std::vector<std::vector<float>> want;
    CpuSequenceState state;
    for (const auto& tokens : steps) want.push_back(whole.extend(state, tokens));
    for (const int32_t size : {2, 4}) {
      SCOPED_TRACE(std::to_string(size) + " ranks");
      expect_whole_model_logits(sharded_logits(dir, size, steps)[0], want);
    }
  }
  fs::remove_all(dir);
}

TEST(TensorParallelCpu, GemmaIsRefusedWithItsName) {
  const fs::path folder = kFixtures / "gemma3-sliding";
  const ModelConfig c = ModelConfig::from_folder(folder);
  EXPECT_THROW(tp_shard(c, 0, 2), Error);
}

}  // namespace
}  // namespace l2kv
