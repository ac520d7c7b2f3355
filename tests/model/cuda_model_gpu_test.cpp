// The CUDA backend against transformers' float32 logits on the fixtures (bf16 tolerance), its
// greedy continuations, chunked prefill, and KV-pool exhaustion.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gpu_test_support.h"
#include "l2kv/core/error.h"
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

class CudaModelFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaModelFixture, MatchesTransformersInOneRaggedBatch) {
  L2KV_SKIP_WITHOUT_GPU();
  const fs::path dir = kFixtures / GetParam();
  CudaModel model(dir, 256);
  std::ifstream rf(dir / "reference.json");
  const auto reference = nlohmann::json::parse(rf);
  const int64_t vocab = model.config().vocab_size;
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& c : reference["cases"])
    prompts.push_back(c["prompt"].get<std::vector<int32_t>>());
  std::vector<CudaSequence> seqs(prompts.size());
  std::vector<CudaSequence*> ptrs;
  for (auto& s : seqs) ptrs.push_back(&s);
  const auto logits = model.extend(ptrs, prompts, /*all_logits=*/true, nullptr);
  size_t row = 0;
  std::vector<std::vector<int32_t>> generated(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& c = reference["cases"][i];
    const auto ref =
        read_floats(dir / c["logits_file"].get<std::string>(), prompts[i].size() * vocab);
    double max_abs = 0;
    const double rel = relative_l2(logits.data() + row * vocab, ref.data(), ref.size(), &max_abs);
    std::printf("%s prompt of %zu: logits rel. L2 %.2e, max abs %.2e\n", GetParam().c_str(),
                prompts[i].size(), rel, max_abs);
    EXPECT_LT(rel, 2e-2);
    row += prompts[i].size();
    generated[i].push_back(argmax(logits.data() + (row - 1) * vocab, vocab));
  }
  // Greedy decode: all sequences advance one token per batched step.
  for (int step = 1; step < 32; ++step) {
    std::vector<std::vector<int32_t>> next;
    for (auto& g : generated) next.push_back({g.back()});
    const auto step_logits = model.extend(ptrs, next, /*all_logits=*/false, nullptr);
    for (size_t i = 0; i < generated.size(); ++i)
      generated[i].push_back(argmax(step_logits.data() + i * vocab, vocab));
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto expected = reference["cases"][i]["greedy"].get<std::vector<int32_t>>();
    size_t same = 0;
    while (same < expected.size() && generated[i][same] == expected[same]) ++same;
    std::printf("%s prompt of %zu: greedy agrees for %zu of 32 tokens\n", GetParam().c_str(),
                prompts[i].size(), same);
    EXPECT_EQ(generated[i], expected);
  }
  for (auto& s : seqs) model.release(s);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModelFixture,
                         ::testing::Values("llama2-mha", "llama3-gqa", "qwen2-tied"));

TEST(CudaModel, ChunkedPrefillMatchesOnePass) {
  L2KV_SKIP_WITHOUT_GPU();
  CudaModel model(kFixtures / "llama3-gqa", 64);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 70; ++i) tokens.push_back((i * 37 + 11) % 512);
  CudaSequence whole, chunked;
  CudaSequence* w[] = {&whole};
  CudaSequence* c[] = {&chunked};
  const std::vector<std::vector<int32_t>> all = {tokens};
  const auto expected = model.extend(w, all, false, nullptr);
  const std::vector<std::vector<int32_t>> first = {{tokens.begin(), tokens.begin() + 33}};
  const std::vector<std::vector<int32_t>> second = {{tokens.begin() + 33, tokens.end()}};
  model.extend(c, first, false, nullptr);
  const auto got = model.extend(c, second, false, nullptr);
  double max_abs = 0;
  EXPECT_LT(relative_l2(got.data(), expected.data(), got.size(), &max_abs), 1e-2);
  EXPECT_EQ(argmax(got.data(), 512), argmax(expected.data(), 512));
}

TEST(CudaModel, ExhaustedKvPoolIsAnErrorThatChangesNothing) {
  L2KV_SKIP_WITHOUT_GPU();
  CudaModel model(kFixtures / "qwen2-tied", 4);  // 64 tokens of KV
  CudaSequence a, b;
  CudaSequence* both[] = {&a, &b};
  const std::vector<std::vector<int32_t>> prompts = {std::vector<int32_t>(40, 7),
                                                     std::vector<int32_t>(40, 9)};
  EXPECT_THROW(model.extend(both, prompts, false, nullptr), Error);
  EXPECT_EQ(a.length, 0);
  EXPECT_TRUE(a.blocks.empty());
  const std::vector<std::vector<int32_t>> small = {std::vector<int32_t>(30, 7),
                                                   std::vector<int32_t>(30, 9)};
  EXPECT_NO_THROW(model.extend(both, small, false, nullptr));
  const std::vector<std::vector<int32_t>> bad = {{600}, {1}};
  EXPECT_THROW(model.extend(both, bad, false, nullptr), Error);
  EXPECT_EQ(a.length, 30);
}

}  // namespace
}  // namespace l2kv
