// KV cache groups for sliding-window models: the block manager frees a windowed group's blocks
// once no query to come can see them, prefix hits need only the window, and the engine gives
// the same logits as a model that keeps every position, while a long conversation holds its
// windowed layers' window and not its length.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <random>

#include "l2kv/core/error.h"
#include "l2kv/engine/block_manager.h"
#include "l2kv/engine/cpu_runner.h"
#include "l2kv/engine/engine.h"
#include "l2kv/model/kv_cache_groups.h"

namespace l2kv {
namespace {

namespace fs = std::filesystem;
const fs::path kGemmaFixture =
    fs::path(L2KV_TEST_SOURCE_DIR) / "model" / "fixtures" / "gemma3-sliding";

int64_t blocks_held(const BlockManager& bm) {
  return bm.num_usable() - bm.num_free();
}

// The first block a query at `position` can read in a group of window `w` (0: all).
int64_t first_needed(int64_t position, int32_t w, int32_t block_size) {
  return w == 0 ? 0 : std::max<int64_t>(0, position - w + 1) / block_size;
}

TEST(KvCacheGroups, Gemma3GroupsTheGlobalLayersAndTheWindowedOnesInSlotsOfTheGlobalCount) {
  const ModelConfig c = ModelConfig::synthetic("gemma3-27b");
  const KvCacheGroups g = windowed_kv_cache_groups(c);
  ASSERT_EQ(c.num_layers, 62);
  EXPECT_EQ(g.num_slots, 10);
  EXPECT_EQ(g.windows, (std::vector<int32_t>{0, 1024, 1024, 1024, 1024, 1024, 1024}));
  std::vector<std::vector<int32_t>> slots_used(static_cast<size_t>(g.num_groups()));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const auto group = static_cast<size_t>(g.layer_group[static_cast<size_t>(l)]);
    EXPECT_EQ(group == 0, !c.is_sliding(l)) << "layer " << l;
    slots_used[group].push_back(g.layer_slot[static_cast<size_t>(l)]);
  }
  // No two layers of one group share a slot.
  for (std::vector<int32_t>& s : slots_used) {
    std::sort(s.begin(), s.end());
    EXPECT_EQ(std::adjacent_find(s.begin(), s.end()), s.end());
  }
  EXPECT_EQ(slots_used.back().size(), 2u);
  // A model without windows keeps one group, a slot per layer.
  const KvCacheGroups llama = windowed_kv_cache_groups(ModelConfig::synthetic("llama3-8b"));
  EXPECT_EQ(llama.windows, std::vector<int32_t>{0});
  EXPECT_EQ(llama.num_slots, 32);
}

TEST(BlockManagerWindows, BlocksThatLeftTheWindowGoBackAndBecomeTheNullBlock) {
  BlockManager bm(64, 4, /*enable_caching=*/false, {0, 8});
  bm.allocate_for(1, 20);  // 5 blocks in each group
  EXPECT_EQ(blocks_held(bm), 10);
  // A query at position 20 sees positions 13..20: block 3 (12..15) on.
  bm.free_outside_windows(1, 20);
  EXPECT_EQ(blocks_held(bm), 7);
  const auto windowed = bm.block_table(1, 1);
  ASSERT_EQ(windowed.size(), 5u);
  EXPECT_EQ(std::count(windowed.begin(), windowed.begin() + 3, BlockManager::kNullBlock), 3);
  EXPECT_NE(windowed[3], BlockManager::kNullBlock);
  EXPECT_EQ(std::count(bm.block_table(1, 0).begin(), bm.block_table(1, 0).end(),
                       BlockManager::kNullBlock),
            0);
  bm.check_invariants();
  bm.allocate_for(1, 21);  // one block more in each group
  EXPECT_EQ(blocks_held(bm), 9);
  bm.free_outside_windows(1, 21);  // 14..21: still from block 3
  EXPECT_EQ(blocks_held(bm), 9);
  bm.free_outside_windows(1, 23);  // 16..23: block 3 goes
  EXPECT_EQ(blocks_held(bm), 8);
  bm.check_invariants();
  bm.free(1);
  EXPECT_EQ(blocks_held(bm), 0);
  bm.check_invariants();
  // Null entries make room: a pool of 12 usable blocks grows a sequence to 40 tokens one token
  // at a time (at most 10 blocks of the full group and 2 of the windowed one; 20 without the
  // window), and ends holding the windowed group's last block only.
  BlockManager small(13, 4, false, {0, 4});
  for (int64_t n = 1; n <= 40; ++n) {
    small.free_outside_windows(2, n - 1);
    ASSERT_TRUE(small.can_allocate(2, n)) << n;
    small.allocate_for(2, n);
  }
  EXPECT_EQ(blocks_held(small), 10 + 1);
  EXPECT_THROW(BlockManager(4, 4, false, {}), Error);
  EXPECT_THROW(BlockManager(4, 4, false, {0, -1}), Error);
  // Null entries only lead a windowed group's table.
  const int32_t b = small.block_table(2, 0)[0];
  EXPECT_THROW(small.share(3, {{b}, {b, 0}}), Error);  // a null after a block
  EXPECT_THROW(small.share(3, {{0, b}, {b}}), Error);  // a null in a full-attention table
  small.share(3, {{b}, {0, b}});
  small.check_invariants();
  small.free(3);
  // What one sequence holds at most: every block of the full group, and of a window of 4 the
  // chunk, the 3 positions before it and the block they start in.
  EXPECT_EQ(small.blocks_to_hold(40, 8), 10 + 4);
  EXPECT_EQ(small.blocks_to_hold(6, 8), 2 + 2);
}

std::vector<BlockHash> chain(const std::vector<int32_t>& tokens, int32_t block_size) {
  std::vector<BlockHash> h;
  for (size_t i = 0; i + static_cast<size_t>(block_size) <= tokens.size(); i += block_size) {
    std::optional<BlockHash> parent;
    if (!h.empty()) parent = h.back();
    h.push_back(hash_block(parent, 0, std::span<const int32_t>(tokens).subspan(i, block_size)));
  }
  return h;
}

TEST(BlockManagerWindows, PrefixHitsNeedEveryFullBlockAndOnlyTheWindowOfTheOthers) {
  BlockManager bm(64, 4, /*enable_caching=*/true, {0, 8});
  std::vector<int32_t> tokens(26);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i * 7 % 31);
  const std::vector<BlockHash> h = chain(tokens, 4);  // 6 full blocks
  bm.allocate_for(1, 26);
  for (int32_t g = 0; g < 2; ++g)
    for (size_t i = 0; i < 6; ++i) EXPECT_TRUE(bm.cache_block(bm.block_table(1, g)[i], h[i], g));
  // The same block content in two groups has two keys.
  EXPECT_NE(bm.block_hash(bm.block_table(1, 0)[0]), bm.block_hash(bm.block_table(1, 1)[0]));
  bm.free_outside_windows(1, 26);  // 19..26: windowed blocks 0-3 leave, cached (evictable)
  EXPECT_EQ(bm.num_evictable(), 4);
  const std::vector<int32_t> full(bm.block_table(1, 0).begin(), bm.block_table(1, 0).end());
  const std::vector<int32_t> win(bm.block_table(1, 1).begin(), bm.block_table(1, 1).end());
  bm.free(1);
  bm.check_invariants();

  // Resuming at 24 needs positions 17..23: windowed blocks 4 and 5 only.
  const CachedPrefix hit = bm.find_cached_prefix(h);
  EXPECT_EQ(hit.num_blocks, 6);
  ASSERT_EQ(hit.tables.size(), 2u);
  EXPECT_EQ(hit.tables[0], std::vector<int32_t>(full.begin(), full.begin() + 6));
  EXPECT_EQ(hit.tables[1], (std::vector<int32_t>{0, 0, 0, 0, win[4], win[5]}));
  // Without windowed block 5 the longest usable prefix is 4 blocks: resuming at 16 needs
  // positions 9..15, blocks 2 and 3, which are cached.
  ASSERT_TRUE(bm.can_allocate(2, 26, hit));
  bm.share(2, hit.tables);
  bm.allocate_for(2, 26);
  bm.free(2);
  bm.check_invariants();
  BlockManager other(64, 4, true, {0, 8});
  other.allocate_for(3, 26);
  for (size_t i = 0; i < 6; ++i) other.cache_block(other.block_table(3, 0)[i], h[i], 0);
  for (size_t i = 0; i < 5; ++i) other.cache_block(other.block_table(3, 1)[i], h[i], 1);
  other.free(3);
  const CachedPrefix shorter = other.find_cached_prefix(h);
  EXPECT_EQ(shorter.num_blocks, 5);  // 20: positions 13..19, windowed blocks 3 and 4
  EXPECT_EQ(std::count(shorter.tables[1].begin(), shorter.tables[1].end(), 0), 3);
  // A full group that misses ends the prefix whatever the windowed one has.
  BlockManager third(64, 4, true, {0, 8});
  third.allocate_for(4, 26);
  for (size_t i = 0; i < 6; ++i)
    if (i != 2) third.cache_block(third.block_table(4, 0)[i], h[i], 0);
  for (size_t i = 0; i < 6; ++i) third.cache_block(third.block_table(4, 1)[i], h[i], 1);
  third.free(4);
  EXPECT_EQ(third.find_cached_prefix(h).num_blocks, 2);
}

TEST(BlockManagerWindows, RandomGrowthSharingAndFreeingKeepEveryWindowAndLeakNothing) {
  const std::vector<int32_t> windows{0, 6, 13};
  constexpr int32_t kBlock = 4;
  std::mt19937 rng(11);
  for (bool caching : {false, true}) {
    BlockManager bm(80, kBlock, caching, windows);
    std::map<int64_t, int64_t> length;    // tokens each sequence's tables cover
    std::map<int64_t, int64_t> freed_at;  // the last position free_outside_windows was given
    int64_t next = 0;
    for (int iter = 0; iter < 4000; ++iter) {
      const int op = static_cast<int>(rng() % 10);
      if (op < 6 && !length.empty()) {  // grow one by 1-9 tokens, freeing what left the window
        auto it = length.begin();
        std::advance(it, rng() % length.size());
        bm.free_outside_windows(it->first, it->second);
        freed_at[it->first] = it->second;
        const int64_t grown = it->second + 1 + rng() % 9;
        if (bm.can_allocate(it->first, grown)) {
          bm.allocate_for(it->first, grown);
          it->second = grown;
        } else {
          EXPECT_THROW(bm.allocate_for(it->first, grown), Error);
        }
      } else if (op < 8) {  // a new sequence, maybe a fork of another's whole blocks
        const int64_t id = next++;
        std::vector<std::vector<int32_t>> shared;
        int64_t start = 0;
        auto source = length.begin();
        if (!length.empty()) std::advance(source, rng() % length.size());
        // A fork resumes after the source's whole blocks, which must still hold its window
        // (the scheduler keeps them while a prompt that choices fork from is computed).
        if (!length.empty() && rng() % 2 &&
            freed_at[source->first] <= source->second / kBlock * kBlock) {
          const auto it = source;
          const auto whole = static_cast<size_t>(it->second / kBlock);
          for (int32_t g = 0; g < bm.num_groups(); ++g) {
            const auto t = bm.block_table(it->first, g).first(whole);
            shared.emplace_back(t.begin(), t.end());
          }
          start = static_cast<int64_t>(whole) * kBlock;
          // Only what is inside the fork's window must be there; shared nulls before it are.
          bm.share(id, shared);
          bm.free_outside_windows(id, start);
          freed_at[id] = start;
        }
        const int64_t want = start + 1 + rng() % 20;
        if (bm.can_allocate(id, want)) {
          bm.allocate_for(id, want);
          length[id] = want;
        } else {
          bm.free(id);
          freed_at.erase(id);
        }
      } else if (!length.empty()) {
        auto it = length.begin();
        std::advance(it, rng() % length.size());
        bm.free(it->first);
        freed_at.erase(it->first);
        length.erase(it);
      }
      // Every table covers its tokens and holds a real block wherever the next query (at the
      // sequence's length) or a later one reads.
      for (const auto& [seq, len] : length)
        for (int32_t g = 0; g < bm.num_groups(); ++g) {
          const auto t = bm.block_table(seq, g);
          ASSERT_GE(static_cast<int64_t>(t.size()) * kBlock, len);
          for (int64_t i = first_needed(len, windows[static_cast<size_t>(g)], kBlock);
               i < static_cast<int64_t>(t.size()); ++i)
            ASSERT_NE(t[static_cast<size_t>(i)], BlockManager::kNullBlock)
                << "sequence " << seq << " group " << g << " block " << i;
        }
      bm.check_invariants();
    }
    for (const auto& [seq, len] : length) bm.free(seq);
    EXPECT_EQ(bm.num_free(), bm.num_usable());
    bm.check_invariants();
  }
}

// Each of `got` (greedy tokens with their logprobs) is the greedy continuation of `prompt` by
// the CPU model over a cache that keeps every position, logprob for logprob.
void expect_greedy_of_full_cache(const CpuModel& model, const std::vector<int32_t>& prompt,
                                 const std::vector<SampledToken>& got, const std::string& what) {
  const int64_t vocab = model.config().vocab_size;
  CpuSequenceState state;
  std::vector<float> logits = model.extend(state, prompt);
  for (size_t k = 0; k < got.size(); ++k) {
    const std::span<const float> row(logits.end() - vocab, logits.end());
    const auto best = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    ASSERT_EQ(got[k].token, best) << what << " token " << k;
    double max_logit = -INFINITY, sum = 0;
    for (float v : row) max_logit = std::max<double>(max_logit, v);
    for (float v : row) sum += std::exp(double(v) - max_logit);
    const double logprob = double(row[static_cast<size_t>(best)]) - (max_logit + std::log(sum));
    EXPECT_NEAR(got[k].logprob, logprob, 1e-5) << what << " token " << k;
    logits = model.extend(state, std::span<const int32_t>(&best, 1));
  }
}

GenerationRequest greedy_request(const std::vector<int32_t>& prompt, int32_t max_tokens,
                                 std::vector<SampledToken>& into) {
  GenerationRequest r;
  r.prompt = prompt;
  r.params.temperature = 0;
  r.params.max_tokens = max_tokens;
  r.params.ignore_eos = true;
  r.params.logprobs = 0;
  r.on_output = [&into](const RequestOutput& o) {
    into.insert(into.end(), o.new_logprobs.begin(), o.new_logprobs.end());
  };
  return r;
}

// The engine over the tiny Gemma 3 fixture (window 16, one windowed and one global group of two
// layers each), without prefix caching, so a freed block goes to the free list and is the next
// one handed out: every sampled token's logprob equals the CPU model's over a cache that keeps
// every position, and the pool (larger than the requests would hold without windows) never
// holds more than the global layers' blocks plus a chunk and a window per sequence.
TEST(EngineWindows, GemmaLogitsEqualAModelThatKeepsEveryPositionWithBlocksReused) {
  const auto model = std::make_shared<const CpuModel>(kGemmaFixture);
  ASSERT_EQ(windowed_kv_cache_groups(model->config()).windows, (std::vector<int32_t>{0, 16}));
  EngineConfig config;
  config.block_size = 4;
  config.max_model_len = 256;
  config.num_kv_blocks = 300;
  config.max_num_seqs = 4;
  config.max_num_batched_tokens = 24;
  config.enable_prefix_caching = false;
  Engine engine(std::make_unique<CpuRunner>(model), nullptr, config);
  std::mt19937 rng(5);
  std::vector<std::vector<int32_t>> prompts;
  for (int n : {9, 40, 77, 130}) {
    std::vector<int32_t> p(static_cast<size_t>(n));
    for (int32_t& t : p) t = static_cast<int32_t>(rng() % 512);
    prompts.push_back(p);
  }
  constexpr int32_t kOut = 60;
  std::vector<std::vector<SampledToken>> got(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i)
    engine.add_request(greedy_request(prompts[i], kOut, got[i]));
  int64_t peak = 0;
  while (engine.has_unfinished()) {
    engine.step();
    const EngineStats s = engine.stats();
    peak = std::max<int64_t>(peak, s.kv_blocks_total - s.kv_blocks_free);
  }
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.kv_blocks_free, s.kv_blocks_total);
  int64_t bound = 0, without_windows = 0;
  for (const auto& p : prompts) {
    const int64_t blocks = (static_cast<int64_t>(p.size()) + kOut + 3) / 4;
    bound += blocks + (24 + 16 - 1 + 3) / 4 + 1;  // a 24-token chunk and the window before it
    without_windows += 2 * blocks;
  }
  ASSERT_LT(without_windows, config.num_kv_blocks - 1);  // room to hold everything
  EXPECT_LE(peak, bound);
  EXPECT_LT(bound, without_windows);
  std::cout << "[ gemma windows ] peak blocks in use " << peak << " (bound " << bound
            << ", without windows " << without_windows << ")\n";

  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_EQ(got[i].size(), static_cast<size_t>(kOut)) << i;
    expect_greedy_of_full_cache(*model, prompts[i], got[i], "request " + std::to_string(i));
  }
}

// Choices forked from a prompt (n > 1) and prefix-cache hits resume inside a window: the blocks
// they resume with are there. A 52-token prompt in chunks of 17 ends with a one-token chunk at
// 51, whose window starts in block 9, while a choice forked at 48 reads block 8 (positions
// 33-47): the scheduler keeps it until the prompt is done. Then the same prompt and a longer
// one hit the cache (the windowed group's blocks 4-11 of 12 are what the hit needs).
TEST(EngineWindows, GemmaForksAndPrefixHitsResumeWithTheirWindow) {
  // Both ways of scheduling: under asynchronous scheduling the leader's last prompt chunk is
  // counted computed at its launch, before its choices fork when it is collected.
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "asynchronous scheduling" : "synchronous scheduling");
    const auto model = std::make_shared<const CpuModel>(kGemmaFixture);
    EngineConfig config;
    config.block_size = 4;
    config.max_model_len = 256;
    config.num_kv_blocks = 200;
    config.max_num_seqs = 4;
    config.max_num_batched_tokens = 17;
    config.async_scheduling = async;
    Engine engine(std::make_unique<CpuRunner>(model), nullptr, config);
    std::vector<int32_t> prompt(52);
    for (size_t i = 0; i < prompt.size(); ++i)
      prompt[i] = static_cast<int32_t>((i * 131 + 7) % 512);
    constexpr int32_t kOut = 24;
    std::vector<std::vector<SampledToken>> forked(3);
    int64_t leader = -1;
    for (auto& into : forked) {
      GenerationRequest r = greedy_request(prompt, kOut, into);
      r.share_prompt_with = leader;
      const int64_t id = engine.add_request(std::move(r));
      if (leader < 0) leader = id;
    }
    engine.run_until_idle();
    EXPECT_EQ(engine.stats().prompt_tokens, 52 + 2 * 4);  // one prefill; each fork redoes 48..51
    for (size_t i = 0; i < forked.size(); ++i)
      expect_greedy_of_full_cache(*model, prompt, forked[i], "choice " + std::to_string(i));

    std::vector<int32_t> longer = prompt;
    for (int i = 0; i < 30; ++i) longer.push_back(static_cast<int32_t>((i * 17 + 3) % 512));
    std::vector<std::vector<SampledToken>> hits(2);
    engine.add_request(greedy_request(prompt, kOut, hits[0]));
    engine.add_request(greedy_request(longer, kOut, hits[1]));
    engine.run_until_idle();
    EXPECT_GE(engine.stats().prefix_cache_hits, 2 * 48);
    expect_greedy_of_full_cache(*model, prompt, hits[0], "hit on the same prompt");
    expect_greedy_of_full_cache(*model, longer, hits[1], "hit on a longer prompt");
    const EngineStats s = engine.stats();
    EXPECT_EQ(s.kv_blocks_free, s.kv_blocks_total);
  }
}

// A model runner without a model, in Gemma 3 27B's shapes: checks that every table it gets holds
// real blocks wherever its group reads, counts the blocks each group holds, samples token 1.
class WindowedFakeRunner : public ModelRunner {
 public:
  WindowedFakeRunner()
      : config_(ModelConfig::synthetic("gemma3-27b")), groups_(windowed_kv_cache_groups(config_)) {}
  const ModelConfig& config() const override { return config_; }
  std::string device_name() const override { return "fake"; }
  KvCacheSizing prepare(int32_t block_size, int32_t, int32_t, int32_t, double) override {
    block_size_ = block_size;
    KvCacheSizing s{1, 1 << 20};
    s.group_windows = groups_.windows;
    return s;
  }
  void allocate_kv_cache(int32_t) override {}
  std::vector<SampledToken> execute(const StepInput& step) override {
    std::vector<SampledToken> out;
    for (const StepSequence& s : step.sequences) {
      EXPECT_EQ(s.block_tables.size(), groups_.windows.size());
      for (size_t g = 0; g < s.block_tables.size(); ++g) {
        const auto t = s.block_tables[g];
        const int64_t end = s.start_position + static_cast<int64_t>(s.tokens.size());
        EXPECT_GE(static_cast<int64_t>(t.size()) * block_size_, end);
        const int64_t held = std::count_if(t.begin(), t.end(), [](int32_t b) { return b != 0; });
        for (int64_t i = first_needed(s.start_position, groups_.windows[g], block_size_);
             i < static_cast<int64_t>(t.size()); ++i)
          EXPECT_NE(t[static_cast<size_t>(i)], 0) << "group " << g << " block " << i;
        peak_held[g] = std::max(peak_held[g], held);
        if (s.tokens.size() == 1) decode_peak_held[g] = std::max(decode_peak_held[g], held);
      }
      if (s.sample) out.push_back({1, 0.f, {}});
    }
    return out;
  }

  std::map<size_t, int64_t> peak_held, decode_peak_held;

 private:
  ModelConfig config_;
  KvCacheGroups groups_;
  int32_t block_size_ = 0;
};

// The measure: a 32K-token conversation of Gemma 3 27B (a 31,744-token prompt, 1,024
// tokens out) holds all of its global layers' blocks and, of each windowed group, the window
// (1,024 tokens) and the chunk being computed.
TEST(EngineWindows, A32KConversationOfGemma3HoldsTheWindowOnItsLocalLayers) {
  auto runner = std::make_unique<WindowedFakeRunner>();
  WindowedFakeRunner& fake = *runner;
  EngineConfig config;
  config.block_size = 16;
  config.max_model_len = 32768;
  config.max_num_batched_tokens = 2048;
  config.num_kv_blocks = 20000;
  Engine engine(std::move(runner), nullptr, config);
  GenerationRequest r;
  r.prompt.assign(31744, 7);
  r.params.temperature = 0;
  r.params.max_tokens = 1024;
  r.params.ignore_eos = true;
  int64_t peak = 0, produced = 0;
  r.on_output = [&](const RequestOutput& o) {
    produced += static_cast<int64_t>(o.new_tokens.size());
    const EngineStats s = engine.stats();
    peak = std::max<int64_t>(peak, s.kv_blocks_total - s.kv_blocks_free);
  };
  engine.add_request(std::move(r));
  engine.run_until_idle();
  EXPECT_EQ(produced, 1024);
  EXPECT_EQ(fake.peak_held[0], 2048);  // the global group: every block of 32K tokens
  for (size_t g = 1; g < 7; ++g) {
    EXPECT_LE(fake.peak_held[g], (2048 + 1023 + 15) / 16 + 1) << g;  // chunk + window
    EXPECT_LE(fake.decode_peak_held[g], (1023 + 15) / 16 + 1) << g;  // window
  }
  const EngineStats s = engine.stats();
  EXPECT_EQ(s.kv_blocks_free, s.kv_blocks_total);
  // Bytes held against one table for every layer: a block here holds 10 layers, there 62.
  double held_layer_blocks = 0;
  for (const auto& [g, held] : fake.decode_peak_held)
    held_layer_blocks += 10.0 * static_cast<double>(held);
  std::cout << "[ gemma3-27b 32K ] blocks held while decoding: global " << fake.decode_peak_held[0]
            << ", each windowed group " << fake.decode_peak_held[1] << "; peak blocks in use "
            << peak << "; KV bytes " << held_layer_blocks / (62.0 * 2048)
            << " of a cache without windows\n";
}

}  // namespace
}  // namespace l2kv
