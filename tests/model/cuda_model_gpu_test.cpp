// The CUDA backend against transformers' float32 logits on the fixtures (bf16 tolerance), its
// greedy continuations, chunked prefill, decode kernels and CUDA-graph replay against eager
// runs, fp8 KV caches with calculated scales, and rejection of bad steps.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "gpu_test_support.h"
#include "l2kv/core/dtype.h"
#include "l2kv/core/error.h"
#include "l2kv/engine/cuda_step_state.h"
#include "l2kv/kernels/attention/prefetch_policy.h"
#include "l2kv/kernels/model/gemv.h"
#include "l2kv/kernels/model/kv_scales.h"
#include "l2kv/model/cpu_model.h"
#include "l2kv/model/cuda_model.h"
#include "l2kv/model/hf_weights.h"
#include "l2kv/model/safetensors.h"
#include "model/fixture_list.h"
#include "model/rescaled_fixture.h"
#include "model/tiny_checkpoint.h"

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

// worst = max(worst, e), except that a NaN, once in, stays (std::max would drop it).
void keep_worst(double& worst, double e) {
  if (!(e <= worst) && !std::isnan(worst)) worst = e;
}

double relative_l2(const float* a, const float* b, size_t n, double* max_abs) {
  double d2 = 0, r2 = 0;
  *max_abs = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    d2 += d * d;
    r2 += static_cast<double>(b[i]) * b[i];
    keep_worst(*max_abs, std::abs(d));
  }
  return std::sqrt(d2 / r2);
}

// The largest relative L2 of any row of `vocab` logits (NaN if any row has one): a bound on
// the whole tensor lets one wrong row through among many right ones.
double max_row_relative_l2(const std::vector<float>& got, const std::vector<float>& want,
                           size_t vocab) {
  EXPECT_EQ(got.size(), want.size());
  double worst = 0, max_abs = 0;
  for (size_t r = 0; r + vocab <= std::min(got.size(), want.size()); r += vocab)
    keep_worst(worst, relative_l2(got.data() + r, want.data() + r, vocab, &max_abs));
  return worst;
}

size_t count_non_finite(const std::vector<float>& v) {
  return static_cast<size_t>(
      std::count_if(v.begin(), v.end(), [](float x) { return !std::isfinite(x); }));
}

float round_to_bf16(float x) {
  return dtype_bits_to_float(DType::kBFloat16, float_to_dtype_bits(DType::kBFloat16, x));
}

// Every weight of a tiny checkpoint rounded to bf16, so that the CPU backend (float32) and the
// CUDA backend (bf16) compute with the same weights.
void round_to_bf16(testing::TinyQwen3& m) {
  for (auto& entry : m.tensors)
    for (float& x : entry.second.values) x = round_to_bf16(x);
}

int32_t argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

// Block tables of `state`'s pool, handed out from its blocks 1.. (block 0 is the pad rows'
// block) in a shuffled order (fixed seed), so each sequence's blocks are scattered and out of
// order: a kernel that indexes slots by position instead of through the table is caught.
struct Tables {
  std::vector<int32_t> pool;  // handed out from the back
  std::vector<std::vector<int32_t>> rows;
  Tables(const CudaStepState& state, size_t seqs) : rows(seqs) {
    pool.resize(static_cast<size_t>(std::max(state.num_kv_blocks() - 1, 0)));
    std::iota(pool.begin(), pool.end(), 1);
    std::shuffle(pool.begin(), pool.end(), std::mt19937(12345));
  }
  void grow(size_t seq, int32_t tokens, int32_t block_size = 16) {
    while (static_cast<int32_t>(rows[seq].size()) * block_size < tokens) {
      ASSERT_FALSE(pool.empty()) << "the test's KV pool is too small";
      rows[seq].push_back(pool.back());
      pool.pop_back();
    }
  }
};

// Fills the first `rows` rows of the state's logits with NaN (0xff bytes), so a forward that
// writes none of them cannot pass as the run before it.
void poison_logits(CudaStepState& state, size_t rows, cudaStream_t stream) {
  const size_t bytes = rows * static_cast<size_t>(state.config().vocab_size) * sizeof(float);
  EXPECT_EQ(cudaMemsetAsync(const_cast<float*>(state.logits()), 0xff, bytes, stream), cudaSuccess);
}

// Every token's logits of `tokens` as one sequence: the first `prompt` tokens prefilled in one
// step (all their logits), the rest decoded one per step.
std::vector<float> prefill_then_decode(CudaStepState& state, const std::vector<int32_t>& tokens,
                                       size_t prompt) {
  Tables tables(state, 1);
  tables.grow(0, static_cast<int32_t>(tokens.size()));
  const std::span<const int32_t> all(tokens);
  const BatchSequence prefill[] = {{all.first(prompt), 0, tables.rows[0], true}};
  std::vector<float> logits = state.run_to_host(prefill, /*all_logits=*/true, nullptr);
  for (size_t t = prompt; t < tokens.size(); ++t) {
    const BatchSequence step[] = {
        {all.subspan(t, 1), static_cast<int32_t>(t), tables.rows[0], true}};
    const std::vector<float> row = state.run_to_host(step, false, nullptr);
    logits.insert(logits.end(), row.begin(), row.end());
  }
  return logits;
}

// The CPU backend's logits of `tokens` run as prefill_then_decode runs them: the first `prompt`
// in one forward, then one token per forward (fp8 activations are quantized per forward, by its
// rows: CpuModel::set_fp8_activation_rows).
std::vector<float> cpu_prefill_then_decode(const CpuModel& model,
                                           const std::vector<int32_t>& tokens, size_t prompt) {
  CpuSequenceState state;
  const std::span<const int32_t> all(tokens);
  std::vector<float> logits = model.extend(state, all.first(prompt));
  for (size_t t = prompt; t < tokens.size(); ++t) {
    const std::vector<float> row = model.extend(state, all.subspan(t, 1));
    logits.insert(logits.end(), row.begin(), row.end());
  }
  return logits;
}

// The logits of one decode step over `decode` (every row sampled), padded to `bucket` rows
// (both ways, so that eager and replay run the same plan), run eagerly or replayed from the
// graph captured for `bucket`. The logits are poisoned first: a replay that writes nothing
// cannot pass as the eager run before it.
std::vector<float> decode_step_logits(CudaStepState& state, std::span<const BatchSequence> decode,
                                      bool graphs, int32_t bucket, cudaStream_t stream) {
  EXPECT_TRUE(!graphs || state.has_graph(bucket)) << "no graph of " << bucket << " rows";
  state.set_use_graphs(graphs);
  poison_logits(state, decode.size(), stream);
  state.prepare(decode, bucket, stream);
  state.forward(stream);
  std::vector<float> out(decode.size() * static_cast<size_t>(state.config().vocab_size));
  EXPECT_EQ(cudaMemcpyAsync(out.data(), state.logits(), out.size() * sizeof(float),
                            cudaMemcpyDeviceToHost, stream),
            cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(count_non_finite(out), 0u) << (graphs ? "replayed" : "eager") << " step";
  return out;
}

std::unique_ptr<CudaStepState> load(const fs::path& dir, int32_t max_tokens, int32_t blocks,
                                    int32_t max_logit_rows = 0,
                                    KvStorage storage = KvStorage::kModelDtype) {
  auto state = std::make_unique<CudaStepState>(std::make_shared<CudaModel>(dir));
  state->set_kv_storage(storage);
  state->allocate_workspace({max_tokens, 16, 2048, max_logit_rows});
  state->allocate_kv_cache(blocks, 16);
  return state;
}

// One fixture's prompts in one ragged prefill batch, then 32 greedy tokens decoded in batched
// steps (split kernel, eager), with the KV cache stored as `storage` (fp8: scales calculated from
// that prefill, or 1). `dir` holds the checkpoint and transformers' reference; `scales` receives
// the fp8 scales the run used.
struct FixtureRun {
  std::vector<double> logits_rel_l2;  // per prompt, against transformers' float32 logits
  std::vector<size_t> prompt_lengths;
  std::vector<size_t> greedy_agreed;  // leading tokens equal to transformers' greedy ones
  // At the first token that differs: how far l2kv's logit of its own pick lies above its logit
  // of transformers' pick (a near-tie when within the logits' noise); -1 when none differs.
  std::vector<double> flip_gap;
  std::vector<double> logits_max_abs;  // per prompt, largest |l2kv - transformers| logit
  std::vector<std::vector<int32_t>> generated, expected;
};

FixtureRun run_fixture(const fs::path& dir, const std::string& name, KvStorage storage,
                       bool calculate_kv_scales = true, std::vector<float>* scales = nullptr) {
  std::ifstream rf(dir / "reference.json");
  const auto reference = nlohmann::json::parse(rf);
  std::vector<std::vector<int32_t>> prompts;
  size_t total = 0;
  for (const auto& c : reference["cases"]) {
    prompts.push_back(c["prompt"].get<std::vector<int32_t>>());
    total += prompts.back().size();
  }
  auto state = std::make_unique<CudaStepState>(std::make_shared<CudaModel>(dir));
  state->allocate_workspace({static_cast<int32_t>(total), 16, 2048, static_cast<int32_t>(total)});
  state->set_kv_storage(storage);
  state->set_calculate_kv_scales(calculate_kv_scales);
  state->allocate_kv_cache(256, 16);
  const int64_t vocab = state->config().vocab_size;
  Tables tables(*state, prompts.size());
  std::vector<BatchSequence> batch;
  for (size_t i = 0; i < prompts.size(); ++i) {
    tables.grow(i, static_cast<int32_t>(prompts[i].size()));
    batch.push_back({prompts[i], 0, tables.rows[i], true});
  }
  const auto logits = state->run_to_host(batch, /*all_logits=*/true, nullptr);
  if (scales) *scales = state->kv_scales();
  FixtureRun run;
  size_t row = 0;
  run.generated.resize(prompts.size());
  run.flip_gap.assign(prompts.size(), -1.0);
  // Appends sequence i's greedy pick from its logits row, noting the first departure.
  auto pick = [&](size_t i, const float* row_logits) {
    const int32_t token = argmax(row_logits, vocab);
    const auto& want = reference["cases"][i]["greedy"];
    const size_t at = run.generated[i].size();
    if (run.flip_gap[i] < 0 && at < want.size() && token != want[at].get<int32_t>())
      run.flip_gap[i] =
          static_cast<double>(row_logits[token]) - row_logits[want[at].get<int32_t>()];
    run.generated[i].push_back(token);
  };
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
    run.logits_max_abs.push_back(max_abs);
    run.prompt_lengths.push_back(prompts[i].size());
    row += prompts[i].size();
    pick(i, logits.data() + (row - 1) * vocab);
    lengths.push_back(static_cast<int32_t>(prompts[i].size()));
  }
  for (int step = 1; step < 32; ++step) {
    batch.clear();
    for (size_t i = 0; i < run.generated.size(); ++i) {
      tables.grow(i, lengths[i] + 1);
      batch.push_back({std::span<const int32_t>(&run.generated[i].back(), 1), lengths[i],
                       tables.rows[i], true});
    }
    const auto step_logits = state->run_to_host(batch, /*all_logits=*/false, nullptr);
    for (size_t i = 0; i < run.generated.size(); ++i) {
      pick(i, step_logits.data() + i * vocab);
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

// Logits within the 16-bit noise floor of transformers' float32 ones; greedy tokens
// transformers' own, or parting only at a near-tie. The bf16 fixtures measured up to 1.29e-2
// (H100 and H200); llama2-mha, the fp16 one (3 more mantissa bits), up to 1.66e-3, so its bound
// is 4e-3, where a 1 % scale error shows.
void expect_matches_transformers(const FixtureRun& run, const std::string& name) {
  const double bound = name == "llama2-mha" ? 4e-3 : 2e-2;
  for (size_t i = 0; i < run.prompt_lengths.size(); ++i) {
    EXPECT_LT(run.logits_rel_l2[i], bound) << name << " prompt of " << run.prompt_lengths[i];
    // bf16 rounding over the 1100-token prompt of llama3-hd128 flips a 0.0066-gap near-tie
    // after 18 tokens (its logits still match within the bound above). Elsewhere the greedy
    // tokens are transformers' own, or part from them only at a near-tie: where l2kv's logits
    // put transformers' token within their measured noise of its own pick (qwen3-qknorm's
    // prompt of 5 has a 0.0017 gap in transformers' continuation).
    if (run.prompt_lengths[i] > 256) {
      EXPECT_GE(run.greedy_agreed[i], 12u);
      continue;
    }
    if (run.generated[i] == run.expected[i]) continue;
    std::printf(
        "%s prompt of %zu: greedy parts at token %zu, where l2kv's pick leads "
        "transformers' by %.2e (prompt logits' largest difference %.2e)\n",
        name.c_str(), run.prompt_lengths[i], run.greedy_agreed[i], run.flip_gap[i],
        run.logits_max_abs[i]);
    EXPECT_LE(run.flip_gap[i], run.logits_max_abs[i])
        << "greedy tokens part from transformers' at token " << run.greedy_agreed[i]
        << " by more than the logits' noise";
  }
}

TEST_P(CudaModelFixture, MatchesTransformersInOneRaggedBatch) {
  L2KV_SKIP_WITHOUT_GPU();
  expect_matches_transformers(
      run_fixture(kFixtures / GetParam(), GetParam(), KvStorage::kModelDtype), GetParam());
}

// Gemma 3 (gemma3-sliding: sliding-window layers of 16 positions between global ones, their own
// RoPE, q/k norms, the norms of the attention and MLP outputs, GeGLU, embeddings scaled by
// sqrt(hidden), final logit soft-capping, head_dim 64) against transformers: prompts of 5, 17 and
// 150 tokens, so the window cuts the prefill's attention and every decode step of the longest.
// With an fp8 cache, the bound of Fp8KvCacheAccuracy. (The rescaled-fixture test does not apply:
// Gemma's norms scale by 1 + weight, so scaling the norm weights changes the model.)
TEST(CudaModel, Gemma3MatchesTransformers) {
  L2KV_SKIP_WITHOUT_GPU();
  const std::string name = "gemma3-sliding";
  expect_matches_transformers(run_fixture(kFixtures / name, name, KvStorage::kModelDtype), name);
  const FixtureRun fp8 = run_fixture(kFixtures / name, name, KvStorage::kFp8E4M3, true);
  for (size_t i = 0; i < fp8.prompt_lengths.size(); ++i) EXPECT_LT(fp8.logits_rel_l2[i], 0.12);
}

// Gemma 3 at head_dim 256 (its 1B-12B sizes; the fixture has 64): a tiny random checkpoint in
// gemma3-sliding's layout (window 16, a sliding layer then a global one, twice) with head_dim
// 256 and norm weights away from 0 (they scale by 1 + weight), weights rounded to bf16 so both
// backends hold the same ones, against the CPU backend over a 40-token prompt and 20 decode
// steps: within the 16-bit bound of the fixtures.
TEST(CudaModel, Gemma3HeadDim256MatchesTheCpuModel) {
  L2KV_SKIP_WITHOUT_GPU();
  nlohmann::json config =
      nlohmann::json::parse(std::ifstream(kFixtures / "gemma3-sliding" / "config.json"));
  const int64_t hidden = 256, heads = 4, kv_heads = 2, head_dim = 256, inter = 512, vocab = 512,
                layers = 4;
  config["head_dim"] = head_dim;
  config["query_pre_attn_scalar"] = 192;
  std::mt19937 rng(77);
  testing::TinyTensors tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float range) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v = testing::uniform_values(rng, n, -range, range);
    for (float& x : v) x = round_to_bf16(x);
    tensors[name] = {shape, v, {}};
  };
  const float proj = 1.f / std::sqrt(static_cast<float>(hidden));
  add("model.embed_tokens.weight", {vocab, hidden}, 1.f);
  add("model.norm.weight", {hidden}, 0.5f);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const char* norm : {"input_layernorm", "post_attention_layernorm",
                             "pre_feedforward_layernorm", "post_feedforward_layernorm"})
      add(p + norm + ".weight", {hidden}, 0.5f);
    add(p + "self_attn.q_proj.weight", {heads * head_dim, hidden}, 2 * proj);
    add(p + "self_attn.k_proj.weight", {kv_heads * head_dim, hidden}, 2 * proj);
    add(p + "self_attn.v_proj.weight", {kv_heads * head_dim, hidden}, proj);
    add(p + "self_attn.o_proj.weight", {hidden, heads * head_dim}, proj);
    add(p + "self_attn.q_norm.weight", {head_dim}, 0.5f);
    add(p + "self_attn.k_norm.weight", {head_dim}, 0.5f);
    add(p + "mlp.gate_proj.weight", {inter, hidden}, proj);
    add(p + "mlp.up_proj.weight", {inter, hidden}, proj);
    add(p + "mlp.down_proj.weight", {hidden, inter}, proj);
  }
  const fs::path dir = fs::temp_directory_path() / ("l2kv_tiny_gemma3_" + std::to_string(getpid()));
  testing::write_tiny_checkpoint(dir, config, tensors);
  std::vector<int32_t> tokens;
  for (int t = 0; t < 60; ++t) tokens.push_back(static_cast<int32_t>((t * 53 + 5) % vocab));
  const std::vector<float> want = CpuModel(dir).forward(tokens);
  auto state = load(dir, 64, 16, /*max_logit_rows=*/64);
  ASSERT_EQ(state->config().head_dim, 256);
  const std::vector<float> got = prefill_then_decode(*state, tokens, 40);
  fs::remove_all(dir);
  const size_t prompt_values = 40 * static_cast<size_t>(vocab);
  double max_abs = 0;
  const double prompt_error = relative_l2(got.data(), want.data(), prompt_values, &max_abs);
  const double decode_error = relative_l2(got.data() + prompt_values, want.data() + prompt_values,
                                          want.size() - prompt_values, &max_abs);
  const double row_error = max_row_relative_l2(got, want, static_cast<size_t>(vocab));
  std::printf(
      "[gemma3 head_dim 256] CUDA vs CPU logits rel. L2: prompt %.2e, decode %.2e, worst row "
      "%.2e\n",
      prompt_error, decode_error, row_error);
  // Measured 3.15-3.17e-3 (prompt) and 3.27-3.43e-3 (decode) on H200s.
  EXPECT_LT(prompt_error, 7e-3);
  EXPECT_LT(decode_error, 7e-3);
  EXPECT_LT(row_error, 1.4e-2);  // not measured yet: twice the whole-tensor bound
}

// Its sliding-window layers replayed from a CUDA graph equal the eager step (the window's first
// position moves with every step, read from the sequence lengths on the device), and the
// paged_v1 kernel, which has no window, is refused.
TEST(CudaModel, Gemma3GraphReplayAndPagedV1Refusal) {
  L2KV_SKIP_WITHOUT_GPU();
  auto state = load(kFixtures / "gemma3-sliding", 128, 64);
  EXPECT_THROW(state->set_decode_attention(DecodeKernel::kPagedV1, PrefetchPolicy::off()), Error);
  const int64_t vocab = state->config().vocab_size;
  std::vector<int32_t> tokens;
  for (int t = 0; t < 80; ++t) tokens.push_back(static_cast<int32_t>((t * 37 + 11) % vocab));
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  const int32_t sizes[] = {2};
  state->capture_decode_graphs(sizes, stream);
  ASSERT_TRUE(state->has_graph(2));
  Tables tables(*state, 2);
  tables.grow(0, 41);
  tables.grow(1, 71);
  const std::span<const int32_t> all(tokens);
  const BatchSequence prefill[] = {{all.first(40), 0, tables.rows[0], true},
                                   {all.subspan(5, 70), 0, tables.rows[1], true}};
  state->run_to_host(prefill, false, stream);
  const BatchSequence decode[] = {{all.subspan(40, 1), 40, tables.rows[0], true},
                                  {all.subspan(75, 1), 70, tables.rows[1], true}};
  const auto eager = decode_step_logits(*state, decode, false, 2, stream);
  const auto replayed = decode_step_logits(*state, decode, true, 2, stream);
  for (size_t i = 0; i < 2; ++i) {
    double max_abs = 0;
    // The same kernels over the same plan: only summation order may differ.
    const double rel =
        relative_l2(replayed.data() + i * vocab, eager.data() + i * vocab, vocab, &max_abs);
    std::printf("[gemma3 replay] row %zu: logits rel. L2 replayed vs eager %.2e\n", i, rel);
    EXPECT_LT(rel, 5e-3) << "row " << i;
  }
  cudaStreamDestroy(stream);
}

// A mixed step with sliding windows: one sequence decoding at position 40 (past the window of
// 16) beside another's 30-token prompt, so the split kernel and the prefill kernel both run
// windowed layers in one step; each sequence's logits against the CPU backend's.
TEST(CudaModel, Gemma3MixedStepMatchesTheCpuModel) {
  L2KV_SKIP_WITHOUT_GPU();
  const fs::path dir = kFixtures / "gemma3-sliding";
  auto state = load(dir, 128, 64, /*max_logit_rows=*/64);
  const int64_t vocab = state->config().vocab_size;
  std::vector<int32_t> a, b;
  for (int t = 0; t < 41; ++t) a.push_back(static_cast<int32_t>((t * 37 + 11) % vocab));
  for (int t = 0; t < 30; ++t) b.push_back(static_cast<int32_t>((t * 53 + 7) % vocab));
  const CpuModel cpu(dir);
  const std::vector<float> want_a = cpu.forward(a), want_b = cpu.forward(b);
  Tables tables(*state, 2);
  tables.grow(0, 41);
  tables.grow(1, 30);
  const std::span<const int32_t> all_a(a);
  const BatchSequence prefill[] = {{all_a.first(40), 0, tables.rows[0], true}};
  state->run_to_host(prefill, false, nullptr);
  const BatchSequence mixed[] = {{all_a.subspan(40, 1), 40, tables.rows[0], true},
                                 {b, 0, tables.rows[1], true}};
  const std::vector<float> got = state->run_to_host(mixed, false, nullptr);
  ASSERT_EQ(got.size(), 2 * static_cast<size_t>(vocab));
  double max_abs = 0;
  const double error_a =
      relative_l2(got.data(), want_a.data() + 40 * vocab, static_cast<size_t>(vocab), &max_abs);
  const double error_b = relative_l2(got.data() + vocab, want_b.data() + 29 * vocab,
                                     static_cast<size_t>(vocab), &max_abs);
  std::printf("[gemma3 mixed step] decode row %.2e, prompt's last row %.2e against the CPU\n",
              error_a, error_b);
  EXPECT_LT(error_a, 2e-2);
  EXPECT_LT(error_b, 2e-2);
}

// A mixed step on the wgmma prefill kernel (head_dim 128): three decode rows at ragged
// positions beside a 300-token prompt, the decode rows on the split kernel (with `auto` under
// programmatic dependent launch, loading their older KV before it waits) and the prompt on the
// persistent wgmma kernel. Each sequence's logits against the CPU backend's, the split kernel
// launched plainly and with PDL.
TEST(CudaModel, MixedStepOnTheWgmmaKernelMatchesTheCpuModel) {
  L2KV_SKIP_WITHOUT_GPU();
  const fs::path dir = kFixtures / "llama3-hd128";
  const CpuModel cpu(dir);
  const int64_t vocab = cpu.config().vocab_size;
  const int32_t lengths[] = {41, 101, 15, 300};  // the last is the prompt
  std::vector<std::vector<int32_t>> tokens(4);
  std::vector<std::vector<float>> want(4);
  for (int s = 0; s < 4; ++s) {
    for (int t = 0; t < lengths[s]; ++t)
      tokens[s].push_back(static_cast<int32_t>((t * (37 + 16 * s) + 11 + s) % vocab));
    want[s] = cpu.forward(tokens[s]);
  }
  for (const PrefetchPolicy& policy : {PrefetchPolicy::off(), PrefetchPolicy::automatic()}) {
    SCOPED_TRACE("kv prefetch " + to_string(policy));
    auto state = load(dir, 512, 64, /*max_logit_rows=*/64);
    state->set_decode_attention(DecodeKernel::kSplit, policy);
    Tables tables(*state, 4);
    std::vector<BatchSequence> prefill, mixed;
    for (int s = 0; s < 4; ++s) {
      tables.grow(s, lengths[s]);
      const std::span<const int32_t> all(tokens[s]);
      if (s < 3) {
        prefill.push_back({all.first(lengths[s] - 1), 0, tables.rows[s], false});
        mixed.push_back({all.subspan(lengths[s] - 1, 1), lengths[s] - 1, tables.rows[s], true});
      } else {
        mixed.push_back({all, 0, tables.rows[s], true});
      }
    }
    state->run_to_host(prefill, false, nullptr);
    const std::vector<float> got = state->run_to_host(mixed, false, nullptr);
    ASSERT_EQ(got.size(), 4 * static_cast<size_t>(vocab));
    for (int s = 0; s < 4; ++s) {
      double max_abs = 0;
      const double error =
          relative_l2(got.data() + s * vocab, want[s].data() + (lengths[s] - 1) * vocab,
                      static_cast<size_t>(vocab), &max_abs);
      std::printf("[wgmma mixed step, %s] %s of %d: last row %.2e against the CPU\n",
                  to_string(policy).c_str(), s < 3 ? "decode row" : "prompt", lengths[s], error);
      EXPECT_LT(error, 2e-2) << "sequence " << s;
    }
  }
}

void print_fp8_logits(const std::string& name, const FixtureRun& bf16, const FixtureRun& one,
                      const FixtureRun& calculated) {
  for (size_t i = 0; i < bf16.prompt_lengths.size(); ++i)
    std::printf(
        "[fp8-logits] %s prompt of %zu: logits rel. L2 vs float32: bf16 cache %.2e, fp8 "
        "scale 1 %.2e, fp8 calculated scales %.2e (%.1fx bf16); greedy agrees for %zu / "
        "%zu / %zu of 32\n",
        name.c_str(), bf16.prompt_lengths[i], bf16.logits_rel_l2[i], one.logits_rel_l2[i],
        calculated.logits_rel_l2[i], calculated.logits_rel_l2[i] / bf16.logits_rel_l2[i],
        bf16.greedy_agreed[i], one.greedy_agreed[i], calculated.greedy_agreed[i]);
}

// The accuracy cost of an fp8 E4M3 KV cache against a 16-bit one, per prompt, with scale 1 and
// with scales calculated from the prefill (the fixtures have no k_scale/v_scale). The fixtures'
// K and V are of magnitude ~1, inside E4M3's normal range, so both fp8 runs pay E4M3's rounding
// (3 mantissa bits, up to 1/16 per value; 4-8e-2 in the logits measured on an H200, and the
// same 4.1-8.3e-2 with float32 everywhere but the stored K/V in cpu_model_test.cpp's mirror,
// with scale 1 or calculated scales alike) and the calculated scales change little here: the
// bound is fp8's, not 2x the 16-bit cache's (1e-3 to 1.3e-2 measured on these 2-layer models,
// far below what E4M3's rounding alone costs). Where scale 1 does fail,
// Fp8CalculatedScalesAtRealMagnitudes shows the calculated scales keep this same error.
// Greedy agreement is printed, not asserted: these tiny random models have near-tied logits.
TEST_P(CudaModelFixture, Fp8KvCacheAccuracy) {
  L2KV_SKIP_WITHOUT_GPU();
  const fs::path dir = kFixtures / GetParam();
  const FixtureRun bf16 = run_fixture(dir, GetParam(), KvStorage::kModelDtype);
  const FixtureRun one = run_fixture(dir, GetParam(), KvStorage::kFp8E4M3, false);
  const FixtureRun calculated = run_fixture(dir, GetParam(), KvStorage::kFp8E4M3, true);
  print_fp8_logits(GetParam(), bf16, one, calculated);
  for (size_t i = 0; i < bf16.prompt_lengths.size(); ++i) {
    EXPECT_LT(one.logits_rel_l2[i], 0.12);
    EXPECT_LT(calculated.logits_rel_l2[i], 0.12);
    // Never materially worse than scale 1 where scale 1 already fits the values (the two round
    // differently, so their errors are two draws of the same size, not equal).
    EXPECT_LT(calculated.logits_rel_l2[i], 1.75 * one.logits_rel_l2[i] + 2e-3);
  }
}

// The same fixture with K 512x larger and V 512x smaller (rescaled_fixture: the same function).
// With scale 1, K saturates at 448 and V turns into E4M3 subnormals, so the logits leave the
// reference (the engine's behaviour before calculated scales); calculated scales store the same
// bytes as for the original fixture, so the error is fp8's rounding again and each scale is
// 512x (K) or 1/512x (V) the original's.
TEST_P(CudaModelFixture, Fp8CalculatedScalesAtRealMagnitudes) {
  L2KV_SKIP_WITHOUT_GPU();
  const std::string name = GetParam();
  std::vector<float> original_scales, scales;
  const FixtureRun original =
      run_fixture(kFixtures / name, name, KvStorage::kFp8E4M3, true, &original_scales);
  const fs::path dir = testing::rescaled_fixture(kFixtures / name);
  const std::string label = name + " rescaled";
  const FixtureRun bf16 = run_fixture(dir, label, KvStorage::kModelDtype);
  const FixtureRun one = run_fixture(dir, label, KvStorage::kFp8E4M3, false);
  const FixtureRun calculated = run_fixture(dir, label, KvStorage::kFp8E4M3, true, &scales);
  fs::remove_all(dir);
  print_fp8_logits(label, bf16, one, calculated);
  for (size_t i = 0; i < bf16.prompt_lengths.size(); ++i) {
    EXPECT_LT(bf16.logits_rel_l2[i], 2e-2);  // the rescaled model computes the same function
    EXPECT_LT(calculated.logits_rel_l2[i], 0.12);
    EXPECT_NEAR(calculated.logits_rel_l2[i], original.logits_rel_l2[i],
                0.05 * original.logits_rel_l2[i] + 1e-3);
    EXPECT_GT(one.logits_rel_l2[i], 2 * calculated.logits_rel_l2[i]);  // scale 1 fails here
  }
  ASSERT_EQ(scales.size(), original_scales.size());
  for (size_t l = 0; l < scales.size(); l += 2) {
    // Exact for bf16 checkpoints; fp16 ones (llama2-mha) round some rescaled q/v weights to
    // fp16 subnormals.
    EXPECT_NEAR(scales[l], testing::kRescale * original_scales[l],
                1e-2f * testing::kRescale * original_scales[l])
        << l;
    EXPECT_NEAR(scales[l + 1], original_scales[l + 1] / testing::kRescale,
                1e-2f * original_scales[l + 1] / testing::kRescale)
        << l;
  }
}

// The fused layer (gemv.h's fusions: RMSNorm prologues or weighted x, RoPE + KV write, residual
// and SiLU x up epilogues, steps of up to 16 rows) against the nine-kernel composition on the same
// steps, the latter with the RoPE epilogue off too (the projection's store, then
// ops::rope_and_cache): 12 prompts of 9 tokens prefilled one by one, then 3 decode steps of all
// 12, one of 5, run twice (it must repeat to the bit), and one of 10. In fp16 the two paths differ
// only in how the sums of squares are added (fixed point against add_rmsnorm's float sum: one
// RMSNorm scale an ulp apart turns some 16-bit x over): 6.4e-4 to 8.2e-4 (llama2-mha). In bf16 the
// fused layer's weighted x rounds gamma x residual before the division by the rms instead of after
// it, an independent rounding of the same size: 7.8e-3 to 8.8e-3 on an H200 and an H100 (qwen2-tied
// the largest). The bound is three quarters of the 16-bit noise floor
// MatchesTransformersInOneRaggedBatch allows (2e-2). A wiring error (a lost residual, bias or norm
// weight, a wrong layer's pools) moves the logits by far more; the fused kernels' arithmetic is
// checked element by element in fused_gemv_gpu_test.cpp.
TEST_P(CudaModelFixture, FusedLayerAgreesWithNineKernels) {
  L2KV_SKIP_WITHOUT_GPU();
  std::vector<std::vector<float>> logits[2];
  for (const bool fused : {true, false}) {
    auto state = load(kFixtures / GetParam(), 64, 128);
    // By default the fused layer serves 1-16 rows of bf16 models, one row of fp16 ones.
    EXPECT_EQ(state->fused_layer_max_rows(),
              state->config().dtype == DType::kBFloat16 ? kGemvMaxRows : 1);
    state->set_fused_layer_max_rows(fused ? kGemvMaxRows : 0);
    state->set_rope_epilogue(fused);
    const int64_t vocab = state->config().vocab_size;
    constexpr size_t kSeqs = 12;
    Tables tables(*state, kSeqs);
    std::vector<std::vector<int32_t>> tokens(kSeqs);
    for (size_t i = 0; i < kSeqs; ++i) {
      for (int t = 0; t < 9; ++t)
        tokens[i].push_back(static_cast<int32_t>((i * 131 + t * 29 + 7) % vocab));
      tables.grow(i, 9);
      const BatchSequence one[] = {{tokens[i], 0, tables.rows[i], true}};
      logits[fused].push_back(state->run_to_host(one, /*all_logits=*/true, nullptr));
    }
    for (int step = 0; step < 3; ++step) {
      std::vector<BatchSequence> batch;
      std::vector<int32_t> next(kSeqs);
      for (size_t i = 0; i < kSeqs; ++i) {
        next[i] = static_cast<int32_t>((i * 17 + step * 5 + 3) % vocab);
        tables.grow(i, 9 + step + 1);
        batch.push_back({std::span<const int32_t>(&next[i], 1), 9 + step, tables.rows[i], true});
      }
      logits[fused].push_back(state->run_to_host(batch, false, nullptr));
    }
    // Five of the sequences (the GEMV's shared-memory ring form at 1-8 rows), the same step
    // twice: a step repeats to the bit (the sums of squares are fixed point, row_sumsq.h).
    std::vector<BatchSequence> five;
    std::vector<int32_t> next(5);
    for (size_t i = 0; i < 5; ++i) {
      next[i] = static_cast<int32_t>((i * 23 + 11) % vocab);
      tables.grow(i, 13);
      five.push_back({std::span<const int32_t>(&next[i], 1), 12, tables.rows[i], true});
    }
    logits[fused].push_back(state->run_to_host(five, false, nullptr));
    EXPECT_EQ(state->run_to_host(five, false, nullptr), logits[fused].back())
        << (fused ? "the fused layer" : "nine kernels") << " gave other bits for the same step";
    // Ten (the GEMV's register form, gate_up still on the GEMV; the 12-row steps above run it
    // on cuBLASLt).
    std::vector<BatchSequence> ten;
    std::vector<int32_t> next_ten(10);
    for (size_t i = 0; i < 10; ++i) {
      const int32_t position = i < 5 ? 13 : 12;  // the five above have one token more
      next_ten[i] = static_cast<int32_t>((i * 37 + 5) % vocab);
      tables.grow(i, position + 1);
      ten.push_back({std::span<const int32_t>(&next_ten[i], 1), position, tables.rows[i], true});
    }
    logits[fused].push_back(state->run_to_host(ten, false, nullptr));
  }
  double worst = 0;
  for (size_t i = 0; i < logits[0].size(); ++i) {
    ASSERT_EQ(logits[0][i].size(), logits[1][i].size());
    double max_abs = 0;
    keep_worst(worst, relative_l2(logits[1][i].data(), logits[0][i].data(), logits[0][i].size(),
                                  &max_abs));
  }
  std::printf("[fused-layer] %s: worst step logits rel. L2 fused vs nine kernels %.2e\n",
              GetParam().c_str(), worst);
  EXPECT_LT(worst, 1.5e-2);
}

// qwen3-qknorm (per-head q/k RMSNorm, head_dim 128 with hidden 256 over 4 heads) joins once
// its folder is committed (make_fixtures.py --only qwen3-qknorm); until then it is left out.
INSTANTIATE_TEST_SUITE_P(Fixtures, CudaModelFixture,
                         ::testing::ValuesIn(testing::fixture_names(
                             kFixtures, {"llama2-mha", "llama3-gqa", "qwen2-tied", "llama3-hd128"},
                             {"qwen3-qknorm"})));

// Qwen3's per-head q/k RMSNorm on the GPU, without the transformers fixture: a tiny random
// Qwen3 checkpoint (head_dim 64 with 4 heads of a hidden size of 128, GQA, tied embeddings,
// q/k norm weights away from 1; weights rounded to bf16 so both backends hold the same ones)
// against the CPU backend, in a prefill and in decode steps over the cache: within the 16-bit
// tolerance of MatchesTransformersInOneRaggedBatch, and far from the same weights run without
// the norm (a Llama config), so the norm is applied on the GPU.
TEST(CudaModel, Qwen3QkNormMatchesTheCpuModel) {
  L2KV_SKIP_WITHOUT_GPU();
  testing::TinyQwen3 m = testing::tiny_qwen3(11, /*hidden=*/128, /*heads=*/4, /*kv_heads=*/2,
                                             /*head_dim=*/64, /*layers=*/2, /*vocab=*/256,
                                             /*inter=*/256);
  round_to_bf16(m);
  const fs::path dir = fs::temp_directory_path() / ("l2kv_tiny_qwen3_" + std::to_string(getpid()));
  testing::write_tiny_checkpoint(dir, m.config, m.tensors);
  const CpuModel cpu(dir);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 12; ++i) tokens.push_back((i * 37 + 11) % 256);
  const std::vector<float> want = cpu.forward(tokens);
  nlohmann::json llama = m.config;
  llama["architectures"] = {"LlamaForCausalLM"};
  std::ofstream(dir / "config.json") << llama.dump(1);
  const std::vector<float> without_norm = CpuModel(dir).forward(tokens);
  std::ofstream(dir / "config.json") << m.config.dump(1);
  auto state = load(dir, 16, 8, /*max_logit_rows=*/16);
  fs::remove_all(dir);
  ASSERT_TRUE(state->config().qk_norm);
  const int64_t vocab = 256;
  const std::vector<float> got = prefill_then_decode(*state, tokens, 9);
  ASSERT_EQ(got.size(), tokens.size() * vocab);
  double max_abs = 0;
  const double error = relative_l2(got.data(), want.data(), want.size(), &max_abs);
  const double off = relative_l2(got.data(), without_norm.data(), want.size(), &max_abs);
  const double row_error = max_row_relative_l2(got, want, vocab);
  std::printf(
      "[qwen3-tiny] CUDA vs CPU logits rel. L2 %.2e, worst row %.2e (vs the model without q/k "
      "norm %.2e)\n",
      error, row_error, off);
  EXPECT_LT(error, 1.5e-2);    // measured 7.93e-3 on H200s
  EXPECT_LT(row_error, 3e-2);  // not measured yet: twice the whole-tensor bound
  EXPECT_GT(off, 0.1);
}

// A mixture of experts (a tiny Qwen3-MoE with and without norm_topk_prob, and the same experts
// as a Mixtral): the CUDA backend's logits against the CPU backend's (checked against a direct
// computation in cpu_model_test) at 16-bit noise, through both expert paths: a 40-token prompt
// (80 slots, grouped by expert on the host, cuBLASLt per expert) and one-token decode steps
// (2 slots, grouped on the device, the expert GEMV); then a decode step replayed from a CUDA
// graph against the same step run eagerly.
TEST(CudaModel, MixtureOfExpertsMatchesTheCpuModel) {
  L2KV_SKIP_WITHOUT_GPU();
  std::vector<int32_t> tokens;
  for (int i = 0; i < 48; ++i) tokens.push_back((i * 37 + 11) % 256);
  const fs::path dir = fs::temp_directory_path() / ("l2kv_tiny_moe_" + std::to_string(getpid()));
  for (const bool normalize : {true, false}) {
    testing::TinyQwen3 m = testing::with_experts(
        testing::tiny_qwen3(21, /*hidden=*/128, /*heads=*/4, /*kv_heads=*/2, /*head_dim=*/64,
                            /*layers=*/2, /*vocab=*/256, /*inter=*/256),
        22, /*experts=*/8, /*top_k=*/2, /*expert_inter=*/64, normalize);
    round_to_bf16(m);
    for (const bool mixtral : {false, true}) {
      if (mixtral && !normalize) continue;  // Mixtral always renormalizes
      testing::TinyQwen3 model = mixtral ? testing::as_mixtral(m) : m;
      // Without Qwen3's q/k norms this tiny model's attention logits reach the tens, where the
      // 16-bit q and k of the CUDA backend flip near-even attention choices: q and k at a
      // quarter keep the comparison at the noise floor of the rest.
      if (mixtral)
        for (auto& [name, tensor] : model.tensors)
          if (name.find("q_proj") != std::string::npos || name.find("k_proj") != std::string::npos)
            for (float& x : tensor.values) x = round_to_bf16(0.25f * x);
      testing::write_tiny_checkpoint(dir, model.config, model.tensors);
      const std::vector<float> want = CpuModel(dir).forward(tokens);
      auto state = load(dir, 64, 16, /*max_logit_rows=*/64);
      ASSERT_EQ(state->config().num_experts, 8);
      const std::vector<float> got = prefill_then_decode(*state, tokens, 40);
      ASSERT_EQ(got.size(), want.size());
      const size_t vocab = 256, prompt_values = 40 * vocab;
      double max_abs = 0;
      const double prompt_error = relative_l2(got.data(), want.data(), prompt_values, &max_abs);
      const double decode_error =
          relative_l2(got.data() + prompt_values, want.data() + prompt_values,
                      want.size() - prompt_values, &max_abs);
      const double row_error = max_row_relative_l2(got, want, vocab);
      std::printf(
          "[moe-tiny %s, norm_topk_prob %d] CUDA vs CPU logits rel. L2: prompt %.2e, "
          "decode %.2e, worst row %.2e\n",
          mixtral ? "mixtral" : "qwen3", normalize, prompt_error, decode_error, row_error);
      EXPECT_LT(prompt_error, 2e-2);
      EXPECT_LT(decode_error, 2e-2);
      // Not measured yet. A router near-tie flips an expert on a few rows, which concentrates
      // the noise there (up to sqrt(rows) times the whole tensor's: ~0.08 for 40 rows at the
      // logged 1.5-1.9e-2); a wrong row is off by O(1).
      EXPECT_LT(row_error, 0.25);

      // A graph of two decode rows (4 slots, which the expert GEMV takes: capturable) replayed
      // against the same step eagerly.
      ASSERT_TRUE(state->model().can_capture_rows(2));
      cudaStream_t stream;
      ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
      const int32_t sizes[] = {2};
      state->capture_decode_graphs(sizes, stream);
      ASSERT_TRUE(state->has_graph(2));
      Tables tables(*state, 2);
      tables.grow(0, 20);
      tables.grow(1, 30);
      const std::span<const int32_t> all(tokens);
      const BatchSequence prefill[] = {{all.first(19), 0, tables.rows[0], true},
                                       {all.subspan(5, 29), 0, tables.rows[1], true}};
      state->run_to_host(prefill, false, stream);
      const BatchSequence decode[] = {{all.subspan(19, 1), 19, tables.rows[0], true},
                                      {all.subspan(34, 1), 29, tables.rows[1], true}};
      const auto eager = decode_step_logits(*state, decode, false, 2, stream);
      const auto replayed = decode_step_logits(*state, decode, true, 2, stream);
      for (size_t i = 0; i < 2; ++i) {
        double row_max_abs = 0;
        // The same kernels over the same plan, as Gemma3GraphReplayAndPagedV1Refusal's bound.
        const double rel =
            relative_l2(replayed.data() + i * vocab, eager.data() + i * vocab, vocab, &row_max_abs);
        std::printf("[moe-tiny replay] row %zu: logits rel. L2 replayed vs eager %.2e\n", i, rel);
        EXPECT_LT(rel, 5e-3) << "row " << i;
        EXPECT_EQ(argmax(replayed.data() + i * vocab, static_cast<int64_t>(vocab)),
                  argmax(eager.data() + i * vocab, static_cast<int64_t>(vocab)));
      }
      cudaStreamDestroy(stream);
    }
  }
  // 32 experts: steps of up to 8 slots per expert take the device path, prompts included, and a
  // prompt that opens with one token 24 times gives its experts more slots than one pass of the
  // expert GEMV takes (8).
  {
    testing::TinyQwen3 m = testing::with_experts(
        testing::tiny_qwen3(23, /*hidden=*/128, /*heads=*/4, /*kv_heads=*/2, /*head_dim=*/64,
                            /*layers=*/2, /*vocab=*/256, /*inter=*/256),
        24, /*experts=*/32, /*top_k=*/2, /*expert_inter=*/64, true);
    round_to_bf16(m);
    testing::write_tiny_checkpoint(dir, m.config, m.tensors);
    std::vector<int32_t> repeated(24, 7);
    repeated.insert(repeated.end(), tokens.begin(), tokens.begin() + 24);
    const std::vector<float> want = CpuModel(dir).forward(repeated);
    auto state = load(dir, 64, 16, /*max_logit_rows=*/64);
    ASSERT_TRUE(state->model().can_capture_rows(40));  // 80 slots of 32 experts
    const std::vector<float> got = prefill_then_decode(*state, repeated, 40);
    double max_abs = 0;
    const double error = relative_l2(got.data(), want.data(), want.size(), &max_abs);
    const double row_error = max_row_relative_l2(got, want, 256);
    std::printf(
        "[moe-tiny qwen3, 32 experts, repeated prompt] CUDA vs CPU logits rel. L2 %.2e, worst "
        "row %.2e\n",
        error, row_error);
    EXPECT_LT(error, 2e-2);
    EXPECT_LT(row_error, 0.25);  // not measured yet: as the 8-expert rows above
  }
  fs::remove_all(dir);
}

// An fp8 checkpoint (compressed-tensors layout, per-channel and per-tensor scales): the CUDA
// backend's logits (fp8 GEMV in prefill and decode, bf16 activations) against the CPU backend's
// on the dequantized weights, at bf16 noise; and off the unquantized model's (the fp8 codes are
// what runs).
TEST(CudaModel, Fp8CheckpointMatchesTheCpuModel) {
  L2KV_SKIP_WITHOUT_GPU();
  const testing::TinyQwen3 m = testing::tiny_qwen3(13, /*hidden=*/256, /*heads=*/4,
                                                   /*kv_heads=*/2, /*head_dim=*/64,
                                                   /*layers=*/2, /*vocab=*/300, /*inter=*/512);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 12; ++i) tokens.push_back((i * 37 + 11) % 300);
  const fs::path dir = fs::temp_directory_path() / ("l2kv_tiny_fp8_" + std::to_string(getpid()));
  testing::write_tiny_checkpoint(dir, m.config, m.tensors);
  const std::vector<float> unquantized = CpuModel(dir).forward(tokens);
  for (bool per_channel : {true, false}) {
    const testing::Fp8Twins t = testing::fp8_twins(m.config, m.tensors, per_channel);
    testing::write_tiny_checkpoint(dir, t.config, t.quantized);
    const std::vector<float> want = CpuModel(dir).forward(tokens);
    auto state = load(dir, 16, 8, /*max_logit_rows=*/16);
    ASSERT_TRUE(state->config().fp8_weights);
    const int64_t vocab = 300;
    const std::vector<float> got = prefill_then_decode(*state, tokens, 9);
    ASSERT_EQ(got.size(), tokens.size() * vocab);
    double max_abs = 0;
    const double error = relative_l2(got.data(), want.data(), want.size(), &max_abs);
    const double off = relative_l2(got.data(), unquantized.data(), want.size(), &max_abs);
    const double row_error = max_row_relative_l2(got, want, static_cast<size_t>(vocab));
    std::printf(
        "[fp8-tiny] %s: CUDA vs CPU logits rel. L2 %.2e, worst row %.2e (vs unquantized %.2e)\n",
        per_channel ? "per channel" : "per tensor", error, row_error, off);
    EXPECT_LT(error, 1.5e-2);    // measured 8.32e-3 (per channel), 8.47e-3 (per tensor), H200s
    EXPECT_LT(row_error, 3e-2);  // not measured yet: twice the whole-tensor bound
    EXPECT_GT(off, 3 * error);
    // A 40-token prompt: more rows than the fp8 GEMV takes, so its projections quantize x per
    // token and multiply in fp8 (W8A8); the 5 decode steps after it run the GEMV on 16-bit x.
    // E4M3's 3 mantissa bits on the activations move the logits by a few percent on this tiny
    // model, and they round differently from any reference that is not bit-identical upstream
    // (an element near a rounding boundary flips by a whole E4M3 step), so the bound is the CPU
    // backend's own W8A8 move (its mirror of the quantization against none) times 1.5 plus the
    // 16-bit bound above; the products themselves are checked exactly in Fp8Gemm.
    std::vector<int32_t> long_tokens;
    for (int i = 0; i < 45; ++i) long_tokens.push_back((i * 53 + 7) % 300);
    CpuModel cpu(dir);
    const std::vector<float> long_want = cpu_prefill_then_decode(cpu, long_tokens, 40);
    cpu.set_fp8_activation_rows(Gemm::kFp8GemvMaxRows);
    const std::vector<float> mirrored = cpu_prefill_then_decode(cpu, long_tokens, 40);
    const double w8a8_move =
        relative_l2(mirrored.data(), long_want.data(), long_want.size(), &max_abs);
    auto long_state = load(dir, 64, 8, /*max_logit_rows=*/64);
    const std::vector<float> long_got = prefill_then_decode(*long_state, long_tokens, 40);
    const double long_error =
        relative_l2(long_got.data(), long_want.data(), long_want.size(), &max_abs);
    // The prompt's four projections took the fp8 product (hidden 256, QKV 512, MLP 512).
    for (const auto& [in, out] : {std::pair{256, 512}, {256, 256}, {256, 1024}, {512, 256}})
      EXPECT_TRUE(long_state->model().gemm().ran_fp8_product(DType::kBFloat16, 40, in, out))
          << in << " -> " << out;
    // The norms and gated_mul writing the codes and scaling the products back (default)
    // against the separate quantize and rescale kernels, on the same cuBLASLt plans: equal to
    // the bit.
    long_state->model().set_fp8_fused_scales(false);
    EXPECT_EQ(prefill_then_decode(*long_state, long_tokens, 40), long_got)
        << "fp8 scales fused into the norms and gated_mul changed the logits";
    long_state->model().set_fp8_fused_scales(true);
    std::printf(
        "[fp8-tiny] %s, 40-token prompt (W8A8) + 5 decode steps: CUDA vs CPU logits "
        "rel. L2 %.2e (the CPU backend's own W8A8 move %.2e)\n",
        per_channel ? "per channel" : "per tensor", long_error, w8a8_move);
    EXPECT_GT(w8a8_move, 1e-2);
    EXPECT_LT(long_error, 1.5 * w8a8_move + 2e-2);
  }
  fs::remove_all(dir);
}

// An fp8 mixture of experts (Qwen3-MoE names, compressed-tensors per channel, the router in 16
// bits as published): fp8 attention projections on the fp8 GEMV and, for the prompt, widened
// (16-bit activations), the experts widened to 16 bits at load, through the expert GEMV (decode)
// and the host path (the prompt). The reference is the
// CPU backend on the same checkpoint with each expert weight as the CUDA backend holds it (code
// x scale rounded to 16 bits). This tiny mixture's 16-bit noise is near the 2e-2 bound of the
// other MoE tests (router choices flip at near-ties; on an H200 its 16-bit model measured
// 1.68e-2 and the fp8 one 2.00e-2), so the bound is that bound or 1.5x the same model's 16-bit
// CUDA-vs-CPU difference, measured here: the fp8 path adds little error of its own; and the
// logits stay away from the unquantized model's (1.6e-1).
TEST(CudaModel, Fp8MixtureOfExpertsMatchesTheCpuModel) {
  L2KV_SKIP_WITHOUT_GPU();
  testing::TinyQwen3 m = testing::with_experts(
      testing::tiny_qwen3(31, /*hidden=*/128, /*heads=*/4, /*kv_heads=*/2, /*head_dim=*/64,
                          /*layers=*/2, /*vocab=*/256, /*inter=*/256),
      32, /*experts=*/8, /*top_k=*/2, /*expert_inter=*/64, true);
  round_to_bf16(m);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 48; ++i) tokens.push_back((i * 37 + 11) % 256);
  const fs::path dir =
      fs::temp_directory_path() / ("l2kv_tiny_fp8_moe_" + std::to_string(getpid()));
  testing::write_tiny_checkpoint(dir, m.config, m.tensors);
  const std::vector<float> unquantized = CpuModel(dir).forward(tokens);
  double max_abs = 0;
  const double noise = [&] {
    auto state = load(dir, 64, 16, /*max_logit_rows=*/64);
    const std::vector<float> got = prefill_then_decode(*state, tokens, 40);
    return relative_l2(got.data(), unquantized.data(), unquantized.size(), &max_abs);
  }();
  testing::Fp8Twins t = testing::fp8_twins(m.config, m.tensors, true);
  t.config["quantization_config"]["ignore"] = {"lm_head", "re:.*mlp.gate$"};
  testing::TinyTensors widened = t.quantized;  // the experts as 16-bit floats
  for (const auto& [name, tensor] : t.dequantized) {
    if (name.find(".experts.") == std::string::npos) continue;
    testing::TinyTensor w = tensor;
    for (float& x : w.values) x = round_to_bf16(x);
    widened[name] = w;
    widened.erase(name.substr(0, name.size() - 6) + "weight_scale");
  }
  testing::write_tiny_checkpoint(dir, t.config, widened);
  const std::vector<float> want = CpuModel(dir).forward(tokens);
  testing::write_tiny_checkpoint(dir, t.config, t.quantized);
  auto state = load(dir, 64, 16, /*max_logit_rows=*/64);
  ASSERT_TRUE(state->config().fp8_weights);
  ASSERT_EQ(state->config().num_experts, 8);
  // 16-bit activations: W8A8 (the prompt's default) flips this tiny router's near-even choices
  // (it moved the CPU backend's logits by 0.23); Fp8CheckpointMatchesTheCpuModel covers it.
  state->model().set_fp8_activations(false);
  const std::vector<float> got = prefill_then_decode(*state, tokens, 40);
  fs::remove_all(dir);
  const double error = relative_l2(got.data(), want.data(), want.size(), &max_abs);
  const double off = relative_l2(got.data(), unquantized.data(), want.size(), &max_abs);
  std::printf(
      "[fp8-moe-tiny] CUDA vs CPU logits rel. L2 %.2e (16-bit model: %.2e; vs unquantized "
      "%.2e)\n",
      error, noise, off);
  EXPECT_LT(error, std::max(2e-2, 1.5 * noise));
  EXPECT_GT(off, 2 * error);
}

TEST(CudaModel, ChunkedPrefillMatchesOnePass) {
  L2KV_SKIP_WITHOUT_GPU();
  auto state = load(kFixtures / "llama3-gqa", 128, 64);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 70; ++i) tokens.push_back((i * 37 + 11) % 512);
  Tables tables(*state, 2);
  tables.grow(0, 70);
  tables.grow(1, 70);
  const BatchSequence whole[] = {{tokens, 0, tables.rows[0], true}};
  const auto expected = state->run_to_host(whole, false, nullptr);
  const std::span<const int32_t> all(tokens);
  const BatchSequence first[] = {{all.subspan(0, 33), 0, tables.rows[1], false}};
  const BatchSequence second[] = {{all.subspan(33), 33, tables.rows[1], true}};
  state->run_to_host(first, false, nullptr);
  const auto got = state->run_to_host(second, false, nullptr);
  double max_abs = 0;
  EXPECT_LT(relative_l2(got.data(), expected.data(), got.size(), &max_abs), 1e-2);
  EXPECT_EQ(argmax(got.data(), 512), argmax(expected.data(), 512));
}

// hidden_row_logits (prompt logprobs) is the LM head over the step's rows: in a ragged batch of
// two prompt chunks (the second one's rows start inside h, at an offset the GEMM's operands
// would not be aligned to), its rows equal those of the all-logits run of the same batch, up to
// the different row counts of the LM head's GEMM (1 row runs on the GEMV). A row off by one
// would be off by O(1).
TEST(CudaModel, HiddenRowLogitsAreTheLmHeadOfTheStepsRows) {
  L2KV_SKIP_WITHOUT_GPU();
  auto state = load(kFixtures / "llama3-gqa", 256, 64, /*max_logit_rows=*/256);
  const int64_t vocab = state->config().vocab_size;
  std::vector<int32_t> a, b;
  for (int i = 0; i < 37; ++i) a.push_back((i * 37 + 11) % 512);
  for (int i = 0; i < 150; ++i) b.push_back((i * 53 + 9) % 512);
  Tables tables(*state, 2);
  tables.grow(0, 37);
  tables.grow(1, 150);
  const BatchSequence batch[] = {{a, 0, tables.rows[0], false}, {b, 0, tables.rows[1], true}};
  const std::vector<float> all = state->run_to_host(batch, /*all_logits=*/true, nullptr);
  ASSERT_EQ(all.size(), static_cast<size_t>(187 * vocab));
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  const int32_t max_rows = CudaModel::kMaxHiddenRowLogits;
  float* out = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&out), sizeof(float) * max_rows * vocab),
            cudaSuccess);
  state->prepare(batch, 0, stream);
  state->forward(stream);
  std::vector<float> got(static_cast<size_t>(max_rows * vocab));
  const std::pair<int32_t, int32_t> ranges[] = {{0, 37}, {37, 64}, {101, 64}, {165, 22}, {186, 1}};
  for (const auto& [first, rows] : ranges) {
    state->hidden_row_logits(first, rows, out, stream);
    ASSERT_EQ(cudaMemcpyAsync(got.data(), out, sizeof(float) * rows * vocab, cudaMemcpyDeviceToHost,
                              stream),
              cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    for (int32_t r = 0; r < rows; ++r) {
      double max_abs = 0;
      EXPECT_LT(relative_l2(got.data() + r * vocab, all.data() + (first + r) * vocab,
                            static_cast<size_t>(vocab), &max_abs),
                1e-3)
          << "row " << first + r;
    }
  }
  EXPECT_THROW(state->hidden_row_logits(180, 8, out, stream), Error);  // past the step's rows
  EXPECT_THROW(state->hidden_row_logits(0, max_rows + 1, out, stream), Error);
  EXPECT_THROW(state->hidden_row_logits(-1, 1, out, stream), Error);
  EXPECT_THROW(state->hidden_row_logits(0, 0, out, stream), Error);
  cudaFree(out);
  cudaStreamDestroy(stream);
}

// Layer 0's calculated scales against a host computation of its K and V (float32 from the
// checkpoint: embedding, RMSNorm, projection with bias, RoPE at each position), within the
// 16-bit rounding of the device's normed input and projection.
TEST(CudaModel, CalculatedKvScalesMatchAHostAmaxOfLayerZero) {
  L2KV_SKIP_WITHOUT_GPU();
  for (const char* name : {"llama3-gqa", "qwen2-tied"}) {  // qwen2 has a K/V bias
    const fs::path dir = kFixtures / name;
    auto state = load(dir, 128, 64, 0, KvStorage::kFp8E4M3);
    ASSERT_TRUE(state->kv_scales_pending());
    const ModelConfig& c = state->config();
    std::vector<int32_t> tokens;
    for (int i = 0; i < 70; ++i) tokens.push_back(static_cast<int32_t>((i * 37 + 11) % 512));
    Tables tables(*state, 1);
    tables.grow(0, 70);
    const BatchSequence batch[] = {{tokens, 0, tables.rows[0], true}};
    state->run_to_host(batch, false, nullptr);
    EXPECT_FALSE(state->kv_scales_pending());
    const std::vector<float> scales = state->kv_scales();

    const Checkpoint ckpt(dir);
    const HfGlobalWeights globals = load_hf_global_weights(ckpt, c);
    const HfLayerWeights w = load_hf_layer_weights(ckpt, c, 0);
    const std::vector<float> inv_freq = rope_inverse_frequencies(c.rope, c.head_dim);
    const int64_t H = c.hidden_size, d = c.head_dim, kv_dim = c.num_kv_heads * d;
    double k_max = 0, v_max = 0;
    for (size_t t = 0; t < tokens.size(); ++t) {
      std::vector<double> x(static_cast<size_t>(H));
      double sum = 0;
      for (int64_t i = 0; i < H; ++i) {
        x[i] = globals.embed[tokens[t] * H + i];
        sum += x[i] * x[i];
      }
      const double inv_rms = 1.0 / std::sqrt(sum / H + c.rms_norm_eps);
      for (int64_t i = 0; i < H; ++i) x[i] *= inv_rms * w.input_norm[i];
      std::vector<double> k(static_cast<size_t>(kv_dim)), v(static_cast<size_t>(kv_dim));
      for (int64_t j = 0; j < kv_dim; ++j) {
        double kj = w.k_bias.empty() ? 0 : w.k_bias[j], vj = w.v_bias.empty() ? 0 : w.v_bias[j];
        for (int64_t i = 0; i < H; ++i) {
          kj += x[i] * w.k[j * H + i];
          vj += x[i] * w.v[j * H + i];
        }
        k[j] = kj, v[j] = vj;
        v_max = std::max(v_max, std::abs(vj));
      }
      for (int64_t head = 0; head < c.num_kv_heads; ++head)
        for (int64_t i = 0; i < d / 2; ++i) {
          const double angle = static_cast<double>(t) * inv_freq[i];
          const double a = k[head * d + i], b = k[head * d + i + d / 2];
          k_max = std::max({k_max, std::abs(a * std::cos(angle) - b * std::sin(angle)),
                            std::abs(b * std::cos(angle) + a * std::sin(angle))});
        }
    }
    std::printf("%s layer 0: k_scale %.5g (host amax / %g: %.5g), v_scale %.5g (host %.5g)\n", name,
                scales[0], kKvScaleKeyRange, k_max / kKvScaleKeyRange, scales[1],
                v_max / kKvScaleValueRange);
    EXPECT_NEAR(scales[0], k_max / kKvScaleKeyRange, 0.02 * k_max / kKvScaleKeyRange) << name;
    EXPECT_NEAR(scales[1], v_max / kKvScaleValueRange, 0.02 * v_max / kKvScaleValueRange) << name;
    for (int64_t l = 1; l < c.num_layers; ++l) {
      EXPECT_GT(scales[2 * l], 0.f);
      EXPECT_NE(scales[2 * l], 1.f);  // every layer was calculated
      EXPECT_NE(scales[2 * l + 1], 1.f);
    }
    // With the calculation off, scales are 1 and stay 1.
    state->set_calculate_kv_scales(false);
    EXPECT_FALSE(state->kv_scales_pending());
    state->run_to_host(batch, false, nullptr);
    for (float scale : state->kv_scales()) EXPECT_EQ(scale, 1.f);
  }
}

// Graphs are captured when the engine starts, before any prompt: the decode steps they replay
// must read the scales the first prefill calculates afterwards (in device memory), not the ones
// there at capture. Scales baked in at capture would be 1 instead of ~1/50, off by that factor.
TEST(CudaModel, GraphCapturedBeforeTheFirstPromptReadsCalculatedScales) {
  L2KV_SKIP_WITHOUT_GPU();
  for (DecodeKernel kernel : {DecodeKernel::kSplit, DecodeKernel::kPagedV1}) {
    auto state = load(kFixtures / "llama3-gqa", 256, 64, 0, KvStorage::kFp8E4M3);
    state->set_decode_attention(kernel, PrefetchPolicy::off());
    cudaStream_t stream;
    ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
    const int32_t sizes[] = {4};
    state->capture_decode_graphs(sizes, stream);
    ASSERT_TRUE(state->has_graph(4));
    ASSERT_TRUE(state->kv_scales_pending());
    const std::vector<int32_t> lengths = {9, 40, 71};
    Tables tables(*state, lengths.size());
    std::vector<std::vector<int32_t>> prompts(lengths.size());
    std::vector<BatchSequence> prefill;
    for (size_t i = 0; i < lengths.size(); ++i) {
      for (int32_t t = 0; t < lengths[i]; ++t)
        prompts[i].push_back(static_cast<int32_t>((i * 71 + t * 13 + 5) % 512));
      tables.grow(i, lengths[i] + 1);
      prefill.push_back({prompts[i], 0, tables.rows[i], true});
    }
    state->run_to_host(prefill, false, nullptr);
    ASSERT_FALSE(state->kv_scales_pending());
    ASSERT_LT(state->kv_scales()[0], 0.5f);  // far from 1, so a stale scale shows
    const int32_t next[] = {3, 77, 500};
    std::vector<BatchSequence> decode;
    for (size_t i = 0; i < lengths.size(); ++i)
      decode.push_back({std::span<const int32_t>(&next[i], 1), lengths[i], tables.rows[i], true});
    const int64_t vocab = state->config().vocab_size;
    const auto eager = decode_step_logits(*state, decode, false, 4, stream);
    const auto replayed = decode_step_logits(*state, decode, true, 4, stream);
    for (size_t i = 0; i < lengths.size(); ++i) {
      double max_abs = 0;
      // Both padded to the bucket: the same kernels over the same plan, as
      // Gemma3GraphReplayAndPagedV1Refusal's bound; a stale scale is off by O(1).
      const double rel = relative_l2(replayed.data() + i * vocab, eager.data() + i * vocab,
                                     static_cast<size_t>(vocab), &max_abs);
      std::printf("[fp8 scales replay] %s sequence %zu: logits rel. L2 replayed vs eager %.2e\n",
                  std::string(decode_kernel_name(kernel)).c_str(), i, rel);
      EXPECT_LT(rel, 5e-3) << decode_kernel_name(kernel) << " sequence " << i;
      EXPECT_EQ(argmax(replayed.data() + i * vocab, vocab),
                argmax(eager.data() + i * vocab, vocab));
    }
    cudaStreamDestroy(stream);
  }
}

// A decode step of ragged sequences: split and paged_v1 (with and without prefetch), eager
// and replayed from a padded CUDA graph, give the same logits up to 16-bit rounding, with a
// 16-bit and with an fp8 KV cache (the kernels read the same stored bytes).
class DecodeKernelsAgree : public ::testing::TestWithParam<KvStorage> {};

TEST_P(DecodeKernelsAgree, EagerAndGraphReplay) {
  L2KV_SKIP_WITHOUT_GPU();
  auto state = load(kFixtures / "llama3-gqa", 256, 128, 0, GetParam());
  const int64_t vocab = state->config().vocab_size;
  const std::vector<int32_t> lengths = {5, 16, 17, 33, 64, 100};  // block boundaries +-1
  Tables tables(*state, lengths.size());
  std::vector<std::vector<int32_t>> prompts(lengths.size());
  std::vector<BatchSequence> prefill;
  for (size_t i = 0; i < lengths.size(); ++i) {
    for (int32_t t = 0; t < lengths[i]; ++t)
      prompts[i].push_back(static_cast<int32_t>((i * 131 + t * 29 + 3) % 512));
    tables.grow(i, lengths[i] + 1);
    prefill.push_back({prompts[i], 0, tables.rows[i], true});
  }
  state->run_to_host(prefill, false, nullptr);
  std::vector<int32_t> next(lengths.size());
  for (size_t i = 0; i < next.size(); ++i) next[i] = static_cast<int32_t>(7 * i + 1);
  std::vector<BatchSequence> decode;
  for (size_t i = 0; i < lengths.size(); ++i)
    decode.push_back({std::span<const int32_t>(&next[i], 1), lengths[i], tables.rows[i], true});
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  // Logits poisoned before each step, so a replay that writes nothing cannot pass as the step
  // before it.
  auto step = [&](DecodeKernel kernel, const char* policy, bool graph) {
    state->set_decode_attention(kernel, parse_prefetch_policy(policy));  // drops the graphs
    int32_t pad = 0;
    if (graph) {
      const int32_t sizes[] = {8};
      state->capture_decode_graphs(sizes, stream);
      EXPECT_TRUE(state->has_graph(8)) << decode_kernel_name(kernel) << " " << policy;
      pad = 8;
    }
    poison_logits(*state, lengths.size(), stream);
    state->prepare(decode, pad, stream);
    state->forward(stream);
    std::vector<float> out(lengths.size() * vocab);
    EXPECT_EQ(cudaMemcpyAsync(out.data(), state->logits(), out.size() * 4, cudaMemcpyDeviceToHost,
                              stream),
              cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return out;
  };
  const auto reference = step(DecodeKernel::kSplit, "off", false);
  ASSERT_EQ(count_non_finite(reference), 0u);
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
    double worst = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      double max_abs = 0;
      const double rel = relative_l2(got.data() + i * vocab, reference.data() + i * vocab,
                                     static_cast<size_t>(vocab), &max_abs);
      keep_worst(worst, rel);
      EXPECT_LT(rel, 2e-2) << decode_kernel_name(c.kernel) << " " << c.policy << " graph "
                           << c.graph << " sequence " << i;
      EXPECT_EQ(argmax(got.data() + i * vocab, vocab), argmax(reference.data() + i * vocab, vocab));
    }
    std::printf("[decode-kernels] %s %s graph %d: worst sequence's logits rel. L2 vs split %.2e\n",
                std::string(decode_kernel_name(c.kernel)).c_str(), c.policy, c.graph, worst);
  }
  cudaStreamDestroy(stream);
}

// A model with fp8 projections (synthetic weights, a small Llama shape): the prompt's logits
// from one 200-row prefill (more rows than the fp8 GEMV takes: the weights widened to bf16 and
// multiplied by cuBLASLt, the scale applied before the sum) against the same tokens decoded one
// at a time, by the five-kernel layer (the fused GEMV forms on fp8 weights: the default at one
// row) and by nine kernels (the fp8 GEMV), each applying the scale to the fp32 sum. They round
// differently, so they agree to bf16 noise; a wrong layout, scale or row group would not.
TEST(CudaModel, Fp8ProjectionsAgreeBetweenGemvAndWidenedPaths) {
  L2KV_SKIP_WITHOUT_GPU();
  ModelConfig c = ModelConfig::synthetic("llama3-8b-fp8");
  ASSERT_TRUE(c.fp8_weights);
  c.vocab_size = 1000, c.hidden_size = 512, c.intermediate_size = 1024, c.num_layers = 2;
  c.num_q_heads = 8, c.num_kv_heads = 2, c.head_dim = 64;
  CudaStepState state(std::make_shared<CudaModel>(c, 5));
  state.model().set_fp8_activations(false);  // the widened path, not W8A8 (Fp8Gemm tests it)
  EXPECT_EQ(state.model().weight_bytes(), c.weight_bytes());
  EXPECT_EQ(state.fused_layer_max_rows(), 1);  // the five-kernel layer at one row
  EXPECT_TRUE(state.model().can_fuse_layer(1));
  constexpr int32_t kLen = 200;
  state.allocate_workspace({kLen, 4, 2048, kLen});
  state.allocate_kv_cache(64, 16);
  std::vector<int32_t> prompt(kLen);
  for (int32_t t = 0; t < kLen; ++t) prompt[static_cast<size_t>(t)] = (t * 37 + 11) % 1000;
  Tables tables(state, 2);
  tables.grow(0, kLen);
  tables.grow(1, kLen);
  const std::vector<BatchSequence> prefill = {{prompt, 0, tables.rows[0], true}};
  const std::vector<float> all = state.run_to_host(prefill, true, nullptr);
  ASSERT_EQ(count_non_finite(all), 0u) << "prefilled logits";
  const int64_t vocab = c.vocab_size;
  for (const int32_t fused_rows : {1, 0}) {
    state.set_fused_layer_max_rows(fused_rows);
    double worst = 0;
    for (int32_t t = 0; t < kLen; ++t) {
      const std::vector<BatchSequence> step = {
          {std::span<const int32_t>(&prompt[static_cast<size_t>(t)], 1), t, tables.rows[1], true}};
      const std::vector<float> one = state.run_to_host(step, false, nullptr);
      double max_abs = 0;
      const double rel =
          relative_l2(one.data(), all.data() + t * vocab, static_cast<size_t>(vocab), &max_abs);
      keep_worst(worst, rel);
      ASSERT_EQ(count_non_finite(one), 0u) << "decoded logits at " << t;
    }
    std::printf("[fp8] worst rel. L2 of decoded (%s) against prefilled logits: %.2e\n",
                fused_rows ? "five kernels" : "nine kernels", worst);
    EXPECT_LT(worst, 2e-2) << (fused_rows ? "five kernels" : "nine kernels");
  }
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
  auto state =
      std::make_unique<CudaStepState>(std::make_shared<CudaModel>(kFixtures / "llama3-gqa"));
  state->allocate_workspace({kChunk, 2, kMaxModelLen, 0});
  state->allocate_kv_cache(kMaxModelLen / 16 + 8, 16);
  const int64_t vocab = state->config().vocab_size;
  std::vector<int32_t> prompt(kContext, 11);
  std::fill(prompt.begin() + 49152, prompt.end(), 300);
  Tables tables(*state, 1);
  tables.grow(0, kContext + 1);
  for (int32_t start = 0; start < kContext; start += kChunk) {
    const int32_t n = std::min(kChunk, kContext - start);
    const BatchSequence chunk[] = {
        {std::span<const int32_t>(prompt.data() + start, n), start, tables.rows[0], true}};
    state->run_to_host(chunk, false, nullptr);
  }
  const int32_t next = 42;
  const BatchSequence decode[] = {
      {std::span<const int32_t>(&next, 1), kContext, tables.rows[0], true}};
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto step = [&](DecodeKernel kernel, const char* policy, bool graph) {
    state->set_decode_attention(kernel, parse_prefetch_policy(policy));  // drops the graphs
    if (graph) {
      const int32_t sizes[] = {1};
      state->capture_decode_graphs(sizes, stream);
      EXPECT_TRUE(state->has_graph(1)) << policy;
    }
    poison_logits(*state, 1, stream);  // so a replay that writes nothing cannot pass
    state->prepare(decode, graph ? 1 : 0, stream);
    state->forward(stream);
    std::vector<float> out(static_cast<size_t>(vocab));
    EXPECT_EQ(cudaMemcpyAsync(out.data(), state->logits(), out.size() * 4, cudaMemcpyDeviceToHost,
                              stream),
              cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return out;
  };
  const auto reference = step(DecodeKernel::kSplit, "off", false);
  ASSERT_EQ(count_non_finite(reference), 0u);
  for (const auto& [policy, graph] :
       {std::pair{"off", false}, std::pair{"on", true}, std::pair{"auto", true}}) {
    const auto got = step(DecodeKernel::kPagedV1, policy, graph);
    double max_abs = 0;
    const double rel = relative_l2(got.data(), reference.data(), got.size(), &max_abs);
    std::printf("[paged_v1 past 48K] %s graph %d: logits rel. L2 vs split %.2e\n", policy, graph,
                rel);
    EXPECT_LT(rel, 2e-2) << policy << " graph " << graph;
    EXPECT_EQ(argmax(got.data(), vocab), argmax(reference.data(), vocab)) << policy;
  }
  cudaStreamDestroy(stream);
}

TEST(CudaModel, InvalidStepsAreErrors) {
  L2KV_SKIP_WITHOUT_GPU();
  auto state = load(kFixtures / "qwen2-tied", 64, 8);
  const std::vector<int32_t> tokens(40, 7), bad_token = {600};
  const std::vector<int32_t> table = {1, 2, 3}, short_table = {1}, outside = {1, 9, 2};
  const BatchSequence ok[] = {{tokens, 0, table, true}};
  EXPECT_NO_THROW(state->run_to_host(ok, false, nullptr));
  const BatchSequence too_few_blocks[] = {{tokens, 0, short_table, true}};
  EXPECT_THROW(state->run_to_host(too_few_blocks, false, nullptr), Error);
  const BatchSequence block_outside[] = {{tokens, 0, outside, true}};
  EXPECT_THROW(state->run_to_host(block_outside, false, nullptr), Error);
  const BatchSequence token_outside[] = {{bad_token, 40, table, true}};
  EXPECT_THROW(state->run_to_host(token_outside, false, nullptr), Error);
  const std::vector<int32_t> many(65, 1);
  const std::vector<int32_t> five = {1, 2, 3, 4, 5};
  const BatchSequence too_many_tokens[] = {{many, 0, five, true}};
  EXPECT_THROW(state->run_to_host(too_many_tokens, false, nullptr), Error);
}

}  // namespace
}  // namespace l2kv
