// The CUDA backend against transformers' float32 logits on the fixtures (bf16 tolerance), its
// greedy continuations, chunked prefill, decode kernels and CUDA-graph replay against eager
// runs, and rejection of bad steps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "gpu_test_support.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/attention/prefetch_policy.h"
#include "l2kv/model/cuda_model.h"

namespace l2kv {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(L2KV_TEST_SOURCE_DIR) / "model" / "fixtures";

std::vector<float> read_floats(const fs::path& file, size_t n) {
  std::vector<float> v(n);
  std::ifstream f(file, std::ios::binary);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(n * 4));
  return v;
}

double relative_l2(const float* a, const float* b, size_t n, double* max_abs) {
  double d2 = 0, r2 = 0;
  *max_abs = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    d2 += d * d;
    r2 += static_cast<double>(b[i]) * b[i];
    *max_abs = std::max(*max_abs, std::abs(d));
  }
  return std::sqrt(d2 / r2);
}

int32_t argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

// Block tables handed out in order from block 1 (block 0 is the pad rows' block), as the
// engine's block manager would.
struct Tables {
  int32_t next = 1;
  std::vector<std::vector<int32_t>> rows;
  explicit Tables(size_t seqs) : rows(seqs) {}
  void grow(size_t seq, int32_t tokens, int32_t block_size = 16) {
    while (static_cast<int32_t>(rows[seq].size()) * block_size < tokens)
      rows[seq].push_back(next++);
  }
};

std::unique_ptr<CudaModel> load(const fs::path& dir, int32_t max_tokens, int32_t blocks,
                                int32_t max_logit_rows = 0,
                                KvStorage storage = KvStorage::kModelDtype) {
  auto model = std::make_unique<CudaModel>(dir);
  model->set_kv_storage(storage);
  model->allocate_workspace({max_tokens, 16, 2048, max_logit_rows});
  model->allocate_kv_cache(blocks, 16);
  return model;
}

// One fixture's prompts in one ragged prefill batch, then 32 greedy tokens decoded in batched
// steps (split kernel, eager), with the KV cache stored as `storage`.
struct FixtureRun {
  std::vector<double> logits_rel_l2;  // per prompt, against transformers' float32 logits
  std::vector<size_t> prompt_lengths;
  std::vector<size_t> greedy_agreed;  // leading tokens equal to transformers' greedy ones
  std::vector<std::vector<int32_t>> generated, expected;
};

FixtureRun run_fixture(const std::string& name, KvStorage storage) {
  const fs::path dir = kFixtures / name;
  std::ifstream rf(dir / "reference.json");
  const auto reference = nlohmann::json::parse(rf);
  std::vector<std::vector<int32_t>> prompts;
  size_t total = 0;
  for (const auto& c : reference["cases"]) {
    prompts.push_back(c["prompt"].get<std::vector<int32_t>>());
    total += prompts.back().size();
  }
  auto model = std::make_unique<CudaModel>(dir);
  model->allocate_workspace({static_cast<int32_t>(total), 16, 2048, static_cast<int32_t>(total)});
  model->set_kv_storage(storage);
  model->allocate_kv_cache(256, 16);
  const int64_t vocab = model->config().vocab_size;
  Tables tables(prompts.size());
  std::vector<BatchSequence> batch;
  for (size_t i = 0; i < prompts.size(); ++i) {
    tables.grow(i, static_cast<int32_t>(prompts[i].size()));
    batch.push_back({prompts[i], 0, tables.rows[i], true});
  }
  const auto logits = model->run(batch, /*all_logits=*/true, nullptr);
  FixtureRun run;
  size_t row = 0;
  run.generated.resize(prompts.size());
  std::vector<int32_t> lengths;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& c = reference["cases"][i];
    const auto ref =
        read_floats(dir / c["logits_file"].get<std::string>(), prompts[i].size() * vocab);
    double max_abs = 0;
    const double rel = relative_l2(logits.data() + row * vocab, ref.data(), ref.size(), &max_abs);
    std::printf("%s kv %s prompt of %zu: logits rel. L2 %.2e, max abs %.2e\n", name.c_str(),
                std::string(kv_storage_name(storage)).c_str(), prompts[i].size(), rel, max_abs);
    run.logits_rel_l2.push_back(rel);
    run.prompt_lengths.push_back(prompts[i].size());
    row += prompts[i].size();
    run.generated[i].push_back(argmax(logits.data() + (row - 1) * vocab, vocab));
    lengths.push_back(static_cast<int32_t>(prompts[i].size()));
  }
  for (int step = 1; step < 32; ++step) {
    batch.clear();
    for (size_t i = 0; i < run.generated.size(); ++i) {
      tables.grow(i, lengths[i] + 1);
      batch.push_back({std::span<const int32_t>(&run.generated[i].back(), 1), lengths[i],
                       tables.rows[i], true});
    }
    const auto step_logits = model->run(batch, /*all_logits=*/false, nullptr);
    for (size_t i = 0; i < run.generated.size(); ++i) {
      run.generated[i].push_back(argmax(step_logits.data() + i * vocab, vocab));
      ++lengths[i];
    }
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    run.expected.push_back(reference["cases"][i]["greedy"].get<std::vector<int32_t>>());
    const auto& expected = run.expected.back();
    size_t same = 0;
    while (same < expected.size() && run.generated[i][same] == expected[same]) ++same;
    run.greedy_agreed.push_back(same);
    std::printf("%s kv %s prompt of %zu: greedy agrees for %zu of 32 tokens\n", name.c_str(),
                std::string(kv_storage_name(storage)).c_str(), prompts[i].size(), same);
  }
  return run;
}

class CudaModelFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaModelFixture, MatchesTransformersInOneRaggedBatch) {
  L2KV_SKIP_WITHOUT_GPU();
  const FixtureRun run = run_fixture(GetParam(), KvStorage::kModelDtype);
  for (size_t i = 0; i < run.prompt_lengths.size(); ++i) {
    EXPECT_LT(run.logits_rel_l2[i], 2e-2);
    // bf16 rounding over the 1100-token prompt of llama3-hd128 flips a 0.0066-gap near-tie
    // after 18 tokens (its logits still match within the bound above).
    if (run.prompt_lengths[i] <= 256)
      EXPECT_EQ(run.generated[i], run.expected[i]);
    else
      EXPECT_GE(run.greedy_agreed[i], 12u);
  }
}

// The accuracy cost of an fp8 E4M3 KV cache (scale 1: the fixtures have no k_scale/v_scale),
// reported per prompt. E4M3 keeps 3 mantissa bits (relative rounding up to 1/16 per value;
// values below 2^-6 lose more), so the bound is fp8's, not bf16's: 5-8e-2 measured on an H200.
// Greedy agreement is printed, not asserted: these tiny random models have near-tied logits.
TEST_P(CudaModelFixture, Fp8KvCacheAccuracy) {
  L2KV_SKIP_WITHOUT_GPU();
  const FixtureRun run = run_fixture(GetParam(), KvStorage::kFp8E4M3);
  for (size_t i = 0; i < run.prompt_lengths.size(); ++i) EXPECT_LT(run.logits_rel_l2[i], 0.12);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModelFixture,
                         ::testing::Values("llama2-mha", "llama3-gqa", "qwen2-tied",
                                           "llama3-hd128"));

TEST(CudaModel, ChunkedPrefillMatchesOnePass) {
  L2KV_SKIP_WITHOUT_GPU();
  auto model = load(kFixtures / "llama3-gqa", 128, 64);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 70; ++i) tokens.push_back((i * 37 + 11) % 512);
  Tables tables(2);
  tables.grow(0, 70);
  tables.grow(1, 70);
  const BatchSequence whole[] = {{tokens, 0, tables.rows[0], true}};
  const auto expected = model->run(whole, false, nullptr);
  const std::span<const int32_t> all(tokens);
  const BatchSequence first[] = {{all.subspan(0, 33), 0, tables.rows[1], false}};
  const BatchSequence second[] = {{all.subspan(33), 33, tables.rows[1], true}};
  model->run(first, false, nullptr);
  const auto got = model->run(second, false, nullptr);
  double max_abs = 0;
  EXPECT_LT(relative_l2(got.data(), expected.data(), got.size(), &max_abs), 1e-2);
  EXPECT_EQ(argmax(got.data(), 512), argmax(expected.data(), 512));
}

// A decode step of ragged sequences: split and paged_v1 (with and without prefetch), eager
// and replayed from a padded CUDA graph, give the same logits up to 16-bit rounding, with a
// 16-bit and with an fp8 KV cache (the kernels read the same stored bytes).
class DecodeKernelsAgree : public ::testing::TestWithParam<KvStorage> {};

TEST_P(DecodeKernelsAgree, EagerAndGraphReplay) {
  L2KV_SKIP_WITHOUT_GPU();
  auto model = load(kFixtures / "llama3-gqa", 256, 128, 0, GetParam());
  const int64_t vocab = model->config().vocab_size;
  const std::vector<int32_t> lengths = {5, 16, 17, 33, 64, 100};  // block boundaries +-1
  Tables tables(lengths.size());
  std::vector<std::vector<int32_t>> prompts(lengths.size());
  std::vector<BatchSequence> prefill;
  for (size_t i = 0; i < lengths.size(); ++i) {
    for (int32_t t = 0; t < lengths[i]; ++t)
      prompts[i].push_back(static_cast<int32_t>((i * 131 + t * 29 + 3) % 512));
    tables.grow(i, lengths[i] + 1);
    prefill.push_back({prompts[i], 0, tables.rows[i], true});
  }
  model->run(prefill, false, nullptr);
  std::vector<int32_t> next(lengths.size());
  for (size_t i = 0; i < next.size(); ++i) next[i] = static_cast<int32_t>(7 * i + 1);
  std::vector<BatchSequence> decode;
  for (size_t i = 0; i < lengths.size(); ++i)
    decode.push_back({std::span<const int32_t>(&next[i], 1), lengths[i], tables.rows[i], true});
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto step = [&](DecodeKernel kernel, const char* policy, bool graph) {
    model->set_decode_attention(kernel, parse_prefetch_policy(policy));
    int32_t pad = 0;
    if (graph) {
      const int32_t sizes[] = {8};
      model->capture_decode_graphs(sizes, stream);
      pad = 8;
    }
    model->prepare(decode, pad, stream);
    model->forward(stream);
    std::vector<float> out(lengths.size() * vocab);
    EXPECT_EQ(cudaMemcpyAsync(out.data(), model->logits(), out.size() * 4, cudaMemcpyDeviceToHost,
                              stream),
              cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return out;
  };
  const auto reference = step(DecodeKernel::kSplit, "off", false);
  for (float v : reference) ASSERT_TRUE(std::isfinite(v));
  struct Case {
    DecodeKernel kernel;
    const char* policy;
    bool graph;
  };
  for (const Case& c :
       {Case{DecodeKernel::kSplit, "off", true}, Case{DecodeKernel::kSplit, "auto", false},
        Case{DecodeKernel::kSplit, "auto", true}, Case{DecodeKernel::kPagedV1, "off", false},
        Case{DecodeKernel::kPagedV1, "on", true}, Case{DecodeKernel::kPagedV1, "auto", true}}) {
    const auto got = step(c.kernel, c.policy, c.graph);
    for (size_t i = 0; i < lengths.size(); ++i) {
      double max_abs = 0;
      const double rel = relative_l2(got.data() + i * vocab, reference.data() + i * vocab,
                                     static_cast<size_t>(vocab), &max_abs);
      EXPECT_LT(rel, 2e-2) << decode_kernel_name(c.kernel) << " " << c.policy << " graph "
                           << c.graph << " sequence " << i;
      EXPECT_EQ(argmax(got.data() + i * vocab, vocab), argmax(reference.data() + i * vocab, vocab));
    }
  }
  cudaStreamDestroy(stream);
}

INSTANTIATE_TEST_SUITE_P(KvStorages, DecodeKernelsAgree,
                         ::testing::Values(KvStorage::kModelDtype, KvStorage::kFp8E4M3),
                         [](const auto& param_info) {
                           return param_info.param == KvStorage::kFp8E4M3 ? "fp8" : "model_dtype";
                         });

// The case at fixture scale: --max-model-len 60064 and a 60,000-token context, decoded
// by paged_v1 (eager and from a graph) and by split. The prompt is one token up to 49,152 and
// another after it: in the first layer V depends on the token only, so a kernel that stops
// at 48K (as paged_v1 once did, silently) attends to the first token's V alone and its logits
// move by O(1), far beyond the 16-bit agreement of the two kernels.
TEST(CudaModel, PagedV1AgreesWithSplitPast48K) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr int32_t kMaxModelLen = 60064, kContext = 60000, kChunk = 4096;
  auto model = std::make_unique<CudaModel>(kFixtures / "llama3-gqa");
  model->allocate_workspace({kChunk, 2, kMaxModelLen, 0});
  model->allocate_kv_cache(kMaxModelLen / 16 + 8, 16);
  const int64_t vocab = model->config().vocab_size;
  std::vector<int32_t> prompt(kContext, 11);
  std::fill(prompt.begin() + 49152, prompt.end(), 300);
  Tables tables(1);
  tables.grow(0, kContext + 1);
  for (int32_t start = 0; start < kContext; start += kChunk) {
    const int32_t n = std::min(kChunk, kContext - start);
    const BatchSequence chunk[] = {
        {std::span<const int32_t>(prompt.data() + start, n), start, tables.rows[0], true}};
    model->run(chunk, false, nullptr);
  }
  const int32_t next = 42;
  const BatchSequence decode[] = {
      {std::span<const int32_t>(&next, 1), kContext, tables.rows[0], true}};
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto step = [&](DecodeKernel kernel, const char* policy, bool graph) {
    model->set_decode_attention(kernel, parse_prefetch_policy(policy));
    if (graph) {
      const int32_t sizes[] = {1};
      model->capture_decode_graphs(sizes, stream);
    }
    model->prepare(decode, graph ? 1 : 0, stream);
    model->forward(stream);
    std::vector<float> out(static_cast<size_t>(vocab));
    EXPECT_EQ(cudaMemcpyAsync(out.data(), model->logits(), out.size() * 4, cudaMemcpyDeviceToHost,
                              stream),
              cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return out;
  };
  const auto reference = step(DecodeKernel::kSplit, "off", false);
  for (float v : reference) ASSERT_TRUE(std::isfinite(v));
  for (const auto& [policy, graph] :
       {std::pair{"off", false}, std::pair{"on", true}, std::pair{"auto", true}}) {
    const auto got = step(DecodeKernel::kPagedV1, policy, graph);
    double max_abs = 0;
    EXPECT_LT(relative_l2(got.data(), reference.data(), got.size(), &max_abs), 2e-2)
        << policy << " graph " << graph;
    EXPECT_EQ(argmax(got.data(), vocab), argmax(reference.data(), vocab)) << policy;
  }
  cudaStreamDestroy(stream);
}

TEST(CudaModel, InvalidStepsAreErrors) {
  L2KV_SKIP_WITHOUT_GPU();
  auto model = load(kFixtures / "qwen2-tied", 64, 8);
  const std::vector<int32_t> tokens(40, 7), bad_token = {600};
  const std::vector<int32_t> table = {1, 2, 3}, short_table = {1}, outside = {1, 9, 2};
  const BatchSequence ok[] = {{tokens, 0, table, true}};
  EXPECT_NO_THROW(model->run(ok, false, nullptr));
  const BatchSequence too_few_blocks[] = {{tokens, 0, short_table, true}};
  EXPECT_THROW(model->run(too_few_blocks, false, nullptr), Error);
  const BatchSequence block_outside[] = {{tokens, 0, outside, true}};
  EXPECT_THROW(model->run(block_outside, false, nullptr), Error);
  const BatchSequence token_outside[] = {{bad_token, 40, table, true}};
  EXPECT_THROW(model->run(token_outside, false, nullptr), Error);
  const std::vector<int32_t> many(65, 1);
  const std::vector<int32_t> five = {1, 2, 3, 4, 5};
  const BatchSequence too_many_tokens[] = {{many, 0, five, true}};
  EXPECT_THROW(model->run(too_many_tokens, false, nullptr), Error);
}

}  // namespace
}  // namespace l2kv
