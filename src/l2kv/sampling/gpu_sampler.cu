// GpuSampler: one thread block per row. Rows without penalties or logit_bias read their logits in
// place (x = raw / temperature, recomputed per pass: a division is cheaper than a scratch round
// trip); adjusted rows (penalties or logit_bias) first write their adjusted logits to a device
// scratch row (a 152K vocab does not fit in shared memory). Scratch rows are a bounded pool, not
// one per row: a call with more adjusted rows than the pool holds is launched in waves on the same
// stream, each wave reusing the pool after the previous one. Top-k and top-p are decided on the
// candidate set (the tokens within a few logits of the largest, gathered and sorted in shared
// memory; see CandidateSet), or, where it cannot hold the kept tokens, by a radix search over the
// row's order-preserving uint32 keys (four 8-bit passes); either way the kept set is
// sample_on_cpu's. The draw is an exponential race, entered, where the largest x is known, only
// by tokens close enough to it to win. Passes over the vocab per row: greedy 1; temperature only
// 1 (the race); + 1 for the max when min-p, top-k or top-p needs it; top-k or top-p + 2 (the
// bins, the gather), + 4 (top-k) or 4-5 (top-p) and the race where the radix search decides;
// penalties or bias + 2 (the scratch copy); logprobs + 2 + N (max, sum, N rounds of top-N). The
// arithmetic follows sampler.h's "exact arithmetic" note step for step (explicitly rounded
// intrinsics, so no fused multiply-add can make the two sides differ).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <string>

#include "l2kv/core/cuda_check.h"
#include "l2kv/sampling/gpu_sampler.h"

namespace l2kv {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kWarps == 32, "the block reductions reduce the warps' partials in one warp");
constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;
constexpr int32_t kNoToken = std::numeric_limits<int32_t>::max();
// Per-token history word in the count scratch: output count in the low bits, a flag for
// "seen in the prompt" above them.
constexpr int32_t kPromptFlag = 1 << 30;
constexpr int32_t kCountMask = kPromptFlag - 1;

// One logit_bias entry as uploaded.
struct BiasEntry {
  int32_t token;
  float bias;
};

// One row's parameters as uploaded (packed on the host, read once per block).
struct RowParams {
  uint64_t seed;
  int64_t step;
  double log_min_p;        // log(min_p); used only when use_min_p
  int64_t history_offset;  // prompt tokens then output tokens, into the history array
  int64_t bias_offset;     // into the bias array
  int32_t bias_count;
  int32_t scratch_slot;  // the row's scratch and count rows; -1: not adjusted
  int32_t prompt_count;
  int32_t output_count;
  float temperature;
  float top_p;
  float repetition_penalty;
  float presence_penalty;
  float frequency_penalty;
  int32_t top_k;  // <= 0 or >= vocab: no limit
  int32_t logprobs;
  uint8_t greedy;
  uint8_t use_top_p;
  uint8_t use_min_p;
  uint8_t penalized;
};
static_assert(sizeof(RowParams) % 8 == 0 && sizeof(BiasEntry) == 8,
              "the bias entries follow the rows and the history the entries, 8-aligned");

// What sample() reads back for one row's logprobs (ids of the top ones stored as int32).
struct LogprobRecord {
  float logprob;
  int32_t top_ids[kMaxLogprobs];
  float top_logprobs[kMaxLogprobs];
};

struct KernelArgs {
  const float* logits;  // [rows, vocab]
  int64_t vocab;
  int32_t first_row;  // this launch (wave) samples rows first_row + blockIdx.x
  const RowParams* rows;
  const BiasEntry* biases;
  const int32_t* history;
  float* scratch;          // [scratch_rows, vocab]: adjusted logits of adjusted rows
  int32_t* counts;         // [scratch_rows, vocab]: zero between calls
  int32_t* tokens;         // [max_rows]
  LogprobRecord* records;  // [max_rows]
  uint8_t* masks;          // [max_rows, vocab] or null
  uint8_t* searches;       // [max_rows] (GpuSampler::KeptSetSearch) or null, beside the masks
};

struct SharedState {
  double bin_mass[kRadixBins];
  int32_t bin_count[kRadixBins];
  double warp_double[kWarps];
  int32_t warp_int[kWarps];
  uint32_t prefix;
  double above;
  double result_double;  // block_argmax / block_sum results
  int32_t result_int;
  int32_t candidates;  // the candidate set's size, as its counting pass found it
};

// Order-preserving key of a float: a < b as floats <=> key(a) < key(b); -0 maps to +0.
__device__ __forceinline__ uint32_t order_key(float v) {
  if (v == 0.f) return 0x80000000u;
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A pass over a row: each thread reads kLoadsInFlight tokens per step, their loads issued
// before any is used. One block streams a whole row, and with one load in flight per thread a
// pass over 128K tokens waited ~40 us on L2's latency.
constexpr int kLoadsInFlight = 8;
constexpr int64_t kTokensPerStep = int64_t{kThreads} * kLoadsInFlight;

// The logits themselves, as a row functor.
struct RowLogits {
  const float* row;
  __device__ __forceinline__ float load(int64_t i) const { return row[i]; }
  __device__ __forceinline__ float adjust(float stored) const { return stored; }
};

// Calls body(i, x(i), inside) for every token i of the row in kLoadsInFlight-token steps (x's
// load(i) reads what is stored, its adjust() makes x of it). Every thread makes the same calls
// (a uniform trip count, for warp collectives in `body`), with inside false past the row.
template <class Logits, class Body>
__device__ __forceinline__ void for_each_token(const Logits& x, int64_t vocab, Body&& body) {
  for (int64_t base = 0; base < vocab; base += kTokensPerStep) {
    float v[kLoadsInFlight];
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; ++k) {
      const int64_t i = base + k * kThreads + threadIdx.x;
      v[k] = i < vocab ? x.load(i) : 0.f;
    }
#pragma unroll
    for (int k = 0; k < kLoadsInFlight; ++k) {
      const int64_t i = base + k * kThreads + threadIdx.x;
      body(i, x.adjust(v[k]), i < vocab);
    }
  }
}

// (score, id) pairs: larger score first, lower id on ties.
__device__ __forceinline__ bool better(double score, int32_t id, double best_score,
                                       int32_t best_id) {
  return score > best_score || (score == best_score && id < best_id);
}

// Warp-wide argmax of (score, id): every lane gets the result.
__device__ __forceinline__ void warp_argmax(double& score, int32_t& id) {
  for (int offset = 16; offset >= 1; offset /= 2) {
    const double other_score = __shfl_xor_sync(kFullMask, score, offset);
    const int32_t other_id = __shfl_xor_sync(kFullMask, id, offset);
    if (better(other_score, other_id, score, id)) {
      score = other_score;
      id = other_id;
    }
  }
}

// Block-wide argmax of (score, id); every thread gets the result. Fixed reduction order:
// within each warp, then warp 0 over the warps' results. (A serial loop of every thread over
// the 32 partials was compiled by nvcc 13.0 into loads past the partials, skipping warps
// 25-27 on an H200: compute-sanitizer memcheck caught the out-of-bounds shared reads.)
__device__ void block_argmax(double& score, int32_t& id, SharedState& sh) {
  warp_argmax(score, id);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sh.warp_double[warp] = score;
    sh.warp_int[warp] = id;
  }
  __syncthreads();
  if (warp == 0) {
    score = sh.warp_double[lane];
    id = sh.warp_int[lane];
    warp_argmax(score, id);
    if (lane == 0) {
      sh.result_double = score;
      sh.result_int = id;
    }
  }
  __syncthreads();
  score = sh.result_double;
  id = sh.result_int;
  __syncthreads();  // the partials may be reused right away
}

// Block-wide sum; every thread gets the result. Fixed reduction order, as block_argmax.
__device__ double block_sum(double v, SharedState& sh) {
  for (int offset = 16; offset >= 1; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sh.warp_double[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double total = sh.warp_double[lane];
    for (int offset = 16; offset >= 1; offset /= 2)
      total += __shfl_xor_sync(kFullMask, total, offset);
    if (lane == 0) sh.result_double = total;
  }
  __syncthreads();
  const double total = sh.result_double;
  __syncthreads();
  return total;
}

// Adds (digit, weight) of every lane whose digit >= 0 to the shared histogram, one atomic per
// distinct digit of the warp (the top digits of a row's logits are few and shared by most
// tokens, so per-lane atomics would serialize). All 32 lanes must call it.
__device__ void warp_histogram_add(int digit, double weight, SharedState& sh) {
  const unsigned lane = threadIdx.x % 32;
  unsigned pending = __ballot_sync(kFullMask, digit >= 0);
  if (pending == 0) return;
  const unsigned peers = __match_any_sync(kFullMask, digit);
  while (pending != 0) {
    const int leader = __ffs(pending) - 1;
    const unsigned group = __shfl_sync(kFullMask, peers, leader);
    double v = ((group >> lane) & 1u) ? weight : 0.0;
    for (int offset = 16; offset >= 1; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
    if (lane == static_cast<unsigned>(leader)) {
      atomicAdd(&sh.bin_mass[digit], v);
      atomicAdd(&sh.bin_count[digit], __popc(group));
    }
    pending &= ~group;
  }
}

// Per-warp counting bins (a warp's lanes add to their own row, so warps never contend): zeroed
// before a counting pass, summed into sh.bin_count after it. Callers synchronize around both.
__device__ __forceinline__ void clear_warp_bins(int32_t (&warp_bins)[kWarps][kRadixBins]) {
  for (int i = threadIdx.x; i < kWarps * kRadixBins; i += kThreads) (&warp_bins[0][0])[i] = 0;
}

__device__ __forceinline__ void sum_warp_bins(const int32_t (&warp_bins)[kWarps][kRadixBins],
                                              SharedState& sh) {
  for (int b = threadIdx.x; b < kRadixBins; b += kThreads) {
    int32_t count = 0;
    for (int w = 0; w < kWarps; ++w) count += warp_bins[w][b];
    sh.bin_count[b] = count;
  }
}

// exp(x - m) in double, the mass of sampler.h's top-p.
__device__ __forceinline__ double token_mass(float x, float m) {
  return exp(__dsub_rn(static_cast<double>(x), static_cast<double>(m)));
}

// The largest key K such that the weight of tokens with key >= K (among those with key >=
// floor_key) is >= target: weight 1 per token gives the k-th largest key (top-k), weight
// exp(x - m) the top-p threshold. MSB-first, 8 bits a pass; `above` carries the weight of
// the tokens whose key is above the current prefix. Such a K is always a present key.
// Counts (kMass false) go into per-warp bins by shared atomics (`warp_bins`, kWarps x
// kRadixBins, scratch), masses through warp_histogram_add.
template <bool kMass, class Logits>
__device__ uint32_t largest_key_reaching(const Logits& x, int64_t vocab, uint32_t floor_key,
                                         double target, float m, SharedState& sh,
                                         int32_t (&warp_bins)[kWarps][kRadixBins]) {
  const int warp = threadIdx.x / 32;
  if (threadIdx.x == 0) {
    sh.prefix = 0;
    sh.above = 0;
  }
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int b = threadIdx.x; b < kRadixBins; b += kThreads) {
      sh.bin_mass[b] = 0;
      sh.bin_count[b] = 0;
    }
    if constexpr (!kMass) clear_warp_bins(warp_bins);
    __syncthreads();
    const uint32_t prefix = sh.prefix;
    const uint32_t high_mask = shift + kRadixBits >= 32 ? 0u : ~0u << (shift + kRadixBits);
    for_each_token(x, vocab, [&](int64_t, float v, bool inside) {
      int digit = -1;
      double weight = 0;
      const uint32_t key = order_key(v);
      if (inside && key >= floor_key && (key & high_mask) == prefix) {
        digit = static_cast<int>((key >> shift) & (kRadixBins - 1));
        weight = kMass ? token_mass(v, m) : 1.0;
      }
      if constexpr (kMass)
        warp_histogram_add(digit, weight, sh);  // the whole warp
      else if (digit >= 0)
        atomicAdd(&warp_bins[warp][digit], 1);
    });
    __syncthreads();
    if constexpr (!kMass) {
      sum_warp_bins(warp_bins, sh);
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      // The largest digit whose tokens, with all above them, reach the target. Should rounding
      // leave none, take the lowest digit present (keep the whole group).
      double above = sh.above;
      int chosen = -1;
      int lowest = -1;
      double above_lowest = above;
      for (int d = kRadixBins - 1; d >= 0; --d) {
        if (sh.bin_count[d] == 0) continue;
        const double weight = kMass ? sh.bin_mass[d] : static_cast<double>(sh.bin_count[d]);
        if (__dadd_rn(above, weight) >= target) {
          chosen = d;
          break;
        }
        lowest = d;
        above_lowest = above;
        above = __dadd_rn(above, weight);
      }
      if (chosen < 0) {
        chosen = lowest;
        above = above_lowest;
      }
      sh.prefix = prefix | (static_cast<uint32_t>(chosen) << shift);
      sh.above = above;
    }
    __syncthreads();
  }
  const uint32_t key = sh.prefix;
  __syncthreads();
  return key;
}

// The candidate set. Real models put a handful of tokens near the row's largest adjusted logit
// m, so top-k and top-p are decided on the tokens close to it: one pass counts tokens in bins of
// 1/kBinsPerLogit below m (per-warp bins, so the atomics rarely meet), a second gathers those of
// the top bins that hold at most kMaxCandidates tokens, which are sorted in shared memory and
// walked as sample_on_cpu walks its sorted tokens. Where the kept tokens may lie beyond the set (a
// large k, a flat distribution under top-p) the radix search over the whole row decides instead.
constexpr int kCandidateBins = 256;
constexpr double kBinsPerLogit = 8.0;  // the bins reach 32 below m
constexpr int kMaxCandidates = 2048;
// The candidates' mass bound, widened for the rounding of its sums.
constexpr double kMassBoundMargin = 1 + 1e-9;

static_assert(kCandidateBins == kRadixBins, "the radix search counts in the set's bins");

struct CandidateSet {
  union {
    int32_t warp_bins[kWarps][kCandidateBins];
    struct {
      // (~order_key(x)) << 32 | id: ascending order is x descending, lower id first.
      uint64_t key[kMaxCandidates];
      double mass[kMaxCandidates];
    } list;
  };
  int32_t size;
};

// A token's bin below m (m finite and >= v); kCandidateBins beyond the last bin, or for NaN.
__device__ __forceinline__ int candidate_bin(float v, float m) {
  const double below = __dsub_rn(static_cast<double>(m), static_cast<double>(v));
  return below < kCandidateBins / kBinsPerLogit ? static_cast<int>(below * kBinsPerLogit)
                                                : kCandidateBins;
}

__device__ __forceinline__ uint32_t candidate_order_key(uint64_t entry) {
  return ~static_cast<uint32_t>(entry >> 32);
}

__device__ __forceinline__ int32_t candidate_id(uint64_t entry) {
  return static_cast<int32_t>(static_cast<uint32_t>(entry));
}

// The float whose order_key is `key` (+0 for the key of both zeros).
__device__ __forceinline__ float key_value(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Ascending bitonic sort of list.key[0, n), padded to a power of two with the largest entry.
__device__ void sort_candidates(CandidateSet& cs, int32_t n) {
  int32_t padded = 1;
  while (padded < n) padded *= 2;
  for (int32_t j = n + threadIdx.x; j < padded; j += kThreads) cs.list.key[j] = ~0ull;
  __syncthreads();
  for (int32_t size = 2; size <= padded; size *= 2)
    for (int32_t stride = size / 2; stride > 0; stride /= 2) {
      for (int32_t j = threadIdx.x; j < padded / 2; j += kThreads) {
        const int32_t lo = 2 * stride * (j / stride) + j % stride, hi = lo + stride;
        const uint64_t a = cs.list.key[lo], b = cs.list.key[hi];
        if ((a > b) == ((lo & size) == 0)) {
          cs.list.key[lo] = b;
          cs.list.key[hi] = a;
        }
      }
      __syncthreads();
    }
}

// Top-k and top-p (step 4 without min-p) on the candidate set of a row whose largest x is m
// (finite): sets floor_key (keep key >= floor_key) and `kept_candidates`, the sorted candidates
// that hold every kept token. False where the set cannot decide; row_mass is then the mass of
// the whole row for top-p without top-k (else 0). Block-uniform.
template <class Logits>
__device__ bool candidate_floor(const Logits& x, int64_t vocab, float m, const RowParams& p,
                                bool use_top_k, SharedState& sh, CandidateSet& cs,
                                uint32_t& floor_key, int32_t& kept_candidates, double& row_mass) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // Top-p over the whole row (no top-k) compares with the mass of every token.
  const bool row_total = p.use_top_p && !use_top_k;
  clear_warp_bins(cs.warp_bins);
  if (threadIdx.x == 0) cs.size = 0;
  __syncthreads();
  double mass = 0;  // summed as the radix search's mass pass sums it, which then reuses it
  for_each_token(x, vocab, [&](int64_t, float v, bool inside) {
    const int bin = inside ? candidate_bin(v, m) : kCandidateBins;
    if (row_total && inside) mass += token_mass(v, m);
    if (bin < kCandidateBins) atomicAdd(&cs.warp_bins[warp][bin], 1);
  });
  const double total = row_total ? block_sum(mass, sh) : 0.0;  // block_sum syncs the block
  row_mass = total;
  __syncthreads();
  sum_warp_bins(cs.warp_bins, sh);
  __syncthreads();
  if (threadIdx.x == 0) {
    // A token of bin b lies at least b / kBinsPerLogit below m: its mass is at most
    // exp(-b / kBinsPerLogit), which bounds the candidates' mass from above.
    int32_t size = 0, last = -1;
    double mass_bound = 0, bin_bound = 1;  // bin_bound: exp(-b / kBinsPerLogit), by products
    const double bin_step = exp(-1 / kBinsPerLogit);
    for (int b = 0; b < kCandidateBins && size + sh.bin_count[b] <= kMaxCandidates; ++b) {
      size += sh.bin_count[b];
      if (row_total) {
        mass_bound += sh.bin_count[b] * bin_bound;
        bin_bound *= bin_step;
      }
      last = b;
    }
    sh.result_int = last;
    sh.candidates = size;
    sh.result_double = mass_bound * kMassBoundMargin;
  }
  __syncthreads();
  const int last_bin = sh.result_int;
  const int32_t n = sh.candidates;
  const double mass_bound = sh.result_double;
  __syncthreads();
  // Top-p over the whole row cannot be reached on candidates whose mass is below its target
  // (a flat distribution): the radix search decides without the gather.
  if (last_bin < 0 || (use_top_k && n < p.top_k) ||
      (row_total && mass_bound < __dmul_rn(static_cast<double>(p.top_p), total)))
    return false;

  for_each_token(x, vocab, [&](int64_t i, float v, bool inside) {
    const bool take = inside && candidate_bin(v, m) <= last_bin;
    const unsigned takers = __ballot_sync(kFullMask, take);
    if (takers == 0) return;
    int32_t first = 0;
    if (lane == 0) first = atomicAdd(&cs.size, __popc(takers));
    first = __shfl_sync(kFullMask, first, 0);
    const int32_t slot = first + __popc(takers & ((1u << lane) - 1u));
    // The gather takes exactly the n tokens counted (the same candidate_bin); the bound only
    // guards shared memory should the two passes ever disagree.
    if (take && slot < kMaxCandidates)
      cs.list.key[slot] = static_cast<uint64_t>(~order_key(v)) << 32 | static_cast<uint32_t>(i);
  });
  __syncthreads();
  sort_candidates(cs, n);

  // Top-k: the k-th largest and the ties that follow it.
  int32_t kept = n;
  uint32_t floor = 0;
  if (use_top_k) {
    floor = candidate_order_key(cs.list.key[p.top_k - 1]);
    if (threadIdx.x == 0) {
      int32_t end = p.top_k;
      while (end < n && candidate_order_key(cs.list.key[end]) == floor) ++end;
      sh.result_int = end;
    }
    __syncthreads();
    kept = sh.result_int;
    __syncthreads();
  }
  // Top-p over the kept candidates, a group of equal x at a time, summed in sorted order.
  if (p.use_top_p) {
    for (int32_t j = threadIdx.x; j < kept; j += kThreads)
      cs.list.mass[j] = token_mass(key_value(candidate_order_key(cs.list.key[j])), m);
    __syncthreads();
    if (threadIdx.x == 0) {
      double sum = total;
      if (use_top_k) {
        sum = 0;
        for (int32_t j = 0; j < kept; ++j) sum = __dadd_rn(sum, cs.list.mass[j]);
      }
      const double target = __dmul_rn(static_cast<double>(p.top_p), sum);
      double cumulative = 0;
      int32_t group = -1;
      for (int32_t g = 0; g < kept && group < 0;) {
        const uint32_t key = candidate_order_key(cs.list.key[g]);
        int32_t end = g;
        for (; end < kept && candidate_order_key(cs.list.key[end]) == key; ++end)
          cumulative = __dadd_rn(cumulative, cs.list.mass[end]);
        if (cumulative >= target) group = g;
        g = end;
      }
      // Not reached: without top-k the threshold lies past the candidates. With top-k the walk
      // ends on the very sum that set the target (top_p < 1), so it always reaches it; keeping
      // all top-k tokens otherwise is sample_on_cpu's fallback, kept alike.
      if (group < 0 && use_top_k) group = kept - 1;
      sh.result_int = group;
      if (group >= 0) sh.prefix = candidate_order_key(cs.list.key[group]);
    }
    __syncthreads();
    const int32_t group = sh.result_int;
    const uint32_t threshold = sh.prefix;
    __syncthreads();
    if (group < 0) return false;
    floor = max(floor, threshold);
  }
  floor_key = floor;
  kept_candidates = kept;
  return true;
}

// Steps 1 and 3 of sampler.h for one token: the raw logit r with history word h.
__device__ __forceinline__ float penalized(float r, int32_t h, const RowParams& p) {
  float z = r;
  if (p.repetition_penalty != 1.f)
    z = z > 0.f ? __fdiv_rn(z, p.repetition_penalty) : __fmul_rn(z, p.repetition_penalty);
  const int32_t count = h & kCountMask;
  if (count > 0) {
    const double penalty =
        __dadd_rn(static_cast<double>(p.presence_penalty),
                  __dmul_rn(static_cast<double>(p.frequency_penalty), static_cast<double>(count)));
    z = static_cast<float>(__dsub_rn(static_cast<double>(z), penalty));
  }
  return z;
}

// The adjusted logit x_i of a row (steps 0-3): from the scratch row for adjusted rows,
// else computed from the raw logit on the fly with the same fp32 division.
struct AdjustedLogits {
  const float* raw;
  const float* scratch;  // null unless penalized
  float temperature;
  bool greedy;
  // The stored value, then x from it (for_each_token issues a step's loads first).
  __device__ __forceinline__ float load(int64_t i) const {
    return scratch != nullptr ? scratch[i] : raw[i];
  }
  // A NaN logit counts as -inf (sampler.h): never kept, never drawn.
  __device__ __forceinline__ float adjust(float stored) const {
    const float v = scratch != nullptr || greedy ? stored : __fdiv_rn(stored, temperature);
    return isnan(v) ? -INFINITY : v;
  }
  __device__ __forceinline__ float operator()(int64_t i) const { return adjust(load(i)); }
};

// The largest x, lowest id on ties (one pass); every thread gets it.
template <class Logits>
__device__ void argmax_pass(const Logits& x, int64_t vocab, double& max_score, int32_t& max_id,
                            SharedState& sh) {
  max_score = -std::numeric_limits<double>::infinity();
  max_id = kNoToken;
  for_each_token(x, vocab, [&](int64_t i, float v, bool inside) {
    if (inside && better(v, static_cast<int32_t>(i), max_score, max_id)) {
      max_score = v;
      max_id = static_cast<int32_t>(i);
    }
  });
  block_argmax(max_score, max_id, sh);
}

// log(sum_i exp(raw_i)) of a row of raw logits in double, after its maximum: the normalizer of
// the logprobs (sampler.h's formula).
__device__ __forceinline__ double raw_log_sum_exp(const float* raw, int64_t vocab,
                                                  SharedState& sh) {
  double raw_max;
  int32_t raw_max_id;
  argmax_pass(RowLogits{raw}, vocab, raw_max, raw_max_id, sh);
  double sum = 0;
  for_each_token(RowLogits{raw}, vocab, [&](int64_t, float v, bool inside) {
    if (inside) sum += exp(__dsub_rn(static_cast<double>(v), raw_max));
  });
  return __dadd_rn(raw_max, log(block_sum(sum, sh)));
}

// The n most likely tokens of a row by rounds of argmax, each round taking the best token
// strictly after the previous one in (logit descending, id ascending) order; thread 0 writes
// their ids and logprobs (raw - lse).
__device__ __forceinline__ void top_logprobs(const float* raw, int64_t vocab, int32_t n, double lse,
                                             SharedState& sh, int32_t* ids, float* logprobs) {
  double previous_score = std::numeric_limits<double>::infinity();
  int32_t previous_id = -1;
  for (int32_t k = 0; k < n; ++k) {
    double best_score = -std::numeric_limits<double>::infinity();
    int32_t best_id = kNoToken;
    for_each_token(RowLogits{raw}, vocab, [&](int64_t i, float v, bool inside) {
      const int32_t id = static_cast<int32_t>(i);
      if (inside && better(previous_score, previous_id, v, id) &&
          better(v, id, best_score, best_id)) {
        best_score = v;
        best_id = id;
      }
    });
    block_argmax(best_score, best_id, sh);
    if (threadIdx.x == 0) {
      ids[k] = best_id;
      logprobs[k] = static_cast<float>(__dsub_rn(best_score, lse));
    }
    previous_score = best_score;
    previous_id = best_id;
  }
}

__global__ void __launch_bounds__(kThreads, 1) sample_kernel(const KernelArgs a) {
  __shared__ SharedState sh;
  __shared__ CandidateSet cs;
  const int row = a.first_row + static_cast<int>(blockIdx.x);
  const RowParams p = a.rows[row];
  const int64_t vocab = a.vocab;
  const float* raw = a.logits + static_cast<int64_t>(row) * vocab;
  constexpr double kInf = std::numeric_limits<double>::infinity();

  // Steps 0, 1 and 3 for adjusted rows: scaled copy, then the biased and penalized tokens
  // rewritten from their raw logits. Other rows never touch the scratch.
  AdjustedLogits x{raw, nullptr, p.temperature, p.greedy != 0};
  if (p.scratch_slot >= 0) {
    float* scratch = a.scratch + static_cast<int64_t>(p.scratch_slot) * vocab;
    for_each_token(x, vocab, [&](int64_t i, float v, bool inside) {
      if (inside) scratch[i] = v;
    });
    int32_t* counts = a.counts + static_cast<int64_t>(p.scratch_slot) * vocab;
    const int32_t* history = a.history + p.history_offset;
    const int32_t history_count = p.prompt_count + p.output_count;
    for (int32_t j = threadIdx.x; j < history_count; j += kThreads) {
      if (j < p.prompt_count)
        atomicOr(&counts[history[j]], kPromptFlag);
      else
        atomicAdd(&counts[history[j]], 1);
    }
    __syncthreads();  // counts complete, and the scaled copy visible to the block
    // Biased tokens (distinct) first: bias, then the penalties if seen. Each claims and zeroes
    // its count, so the history pass below skips it.
    const BiasEntry* biases = a.biases + p.bias_offset;
    for (int32_t j = threadIdx.x; j < p.bias_count; j += kThreads) {
      const int32_t t = biases[j].token;
      const int32_t h = atomicExch(&counts[t], 0);
      float z = __fadd_rn(raw[t], biases[j].bias);
      if (h != 0) z = penalized(z, h, p);
      scratch[t] = p.greedy ? z : __fdiv_rn(z, p.temperature);
    }
    __syncthreads();
    // Exactly one thread claims each distinct token, and leaves its count zero for next time.
    for (int32_t j = threadIdx.x; j < history_count; j += kThreads) {
      const int32_t t = history[j];
      const int32_t h = atomicExch(&counts[t], 0);
      if (h != 0) {
        const float z = penalized(raw[t], h, p);
        scratch[t] = p.greedy ? z : __fdiv_rn(z, p.temperature);
      }
    }
    __syncthreads();
    x.scratch = scratch;
  }

  // Step 2, and m for min-p, top-k and top-p: the largest adjusted logit, lowest id on ties.
  // Rows of temperature alone need no m: their race is the only pass.
  double max_score = -kInf;
  int32_t max_id = kNoToken;
  const bool use_top_k = p.top_k > 0 && p.top_k < vocab;
  const bool need_max = p.greedy || p.use_min_p || p.use_top_p || use_top_k;
  if (need_max) argmax_pass(x, vocab, max_score, max_id, sh);
  const float m = static_cast<float>(max_score);

  int32_t token = max_id;
  if (!p.greedy) {
    // Step 4: top-k, then top-p over the top-k tokens: keep key >= floor_key (0 keeps all).
    uint32_t floor_key = 0;
    int32_t candidates = -1;  // >= 0: the kept tokens are among this many sorted candidates
    double row_mass = 0;      // > 0: the whole row's mass, summed by the candidate search
    if ((use_top_k || p.use_top_p) && isfinite(m))
      candidate_floor(x, vocab, m, p, use_top_k, sh, cs, floor_key, candidates, row_mass);
    if (a.searches != nullptr && threadIdx.x == 0)
      a.searches[row] =
          static_cast<uint8_t>(!use_top_k && !p.use_top_p ? GpuSampler::KeptSetSearch::kNone
                               : candidates >= 0          ? GpuSampler::KeptSetSearch::kCandidates
                                                          : GpuSampler::KeptSetSearch::kRadix);
    if (candidates < 0) {
      if (use_top_k)
        floor_key = largest_key_reaching<false>(x, vocab, 0, static_cast<double>(p.top_k), m, sh,
                                                cs.warp_bins);
      if (p.use_top_p) {
        double total = row_mass;
        if (use_top_k || !(total > 0)) {
          double mass = 0;
          for_each_token(x, vocab, [&](int64_t, float v, bool inside) {
            if (inside && order_key(v) >= floor_key) mass += token_mass(v, m);
          });
          total = block_sum(mass, sh);
        }
        const double target = __dmul_rn(static_cast<double>(p.top_p), total);
        floor_key = largest_key_reaching<true>(x, vocab, floor_key, target, m, sh, cs.warp_bins);
      }
    }
    const auto min_p_keeps = [&](float v) {
      return !p.use_min_p ||
             __dsub_rn(static_cast<double>(v), static_cast<double>(m)) >= p.log_min_p;
    };
    if (a.masks != nullptr)
      for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
        const float v = x(i);
        a.masks[static_cast<int64_t>(row) * vocab + i] =
            order_key(v) >= floor_key && min_p_keeps(v);
      }
    // Step 5: the race over kept tokens, those that can win it (where m is known).
    const double reach =
        need_max && isfinite(m) ? __dsub_rn(static_cast<double>(m), kRaceReach) : -kInf;
    double best_score = -kInf;
    int32_t best_id = kNoToken;
    const auto enter = [&](float v, int32_t id) {
      if (static_cast<double>(v) < reach) return;
      const double u = uniform_for(p.seed, p.step, id);
      const double score = __dsub_rn(static_cast<double>(v), log(-log(u)));
      if (score > -kInf && better(score, id, best_score, best_id)) {
        best_score = score;
        best_id = id;
      }
    };
    if (candidates >= 0) {
      for (int32_t j = threadIdx.x; j < candidates; j += kThreads) {
        const uint32_t key = candidate_order_key(cs.list.key[j]);
        const float v = key_value(key);
        if (key >= floor_key && min_p_keeps(v)) enter(v, candidate_id(cs.list.key[j]));
      }
    } else {
      for_each_token(x, vocab, [&](int64_t i, float v, bool inside) {
        if (inside && order_key(v) >= floor_key && min_p_keeps(v))
          enter(v, static_cast<int32_t>(i));
      });
    }
    block_argmax(best_score, best_id, sh);
    // No candidate (every kept score -inf): the largest x. Block-uniform.
    if (best_id == kNoToken && !need_max) argmax_pass(x, vocab, max_score, max_id, sh);
    token = best_id != kNoToken ? best_id : max_id;
  } else if (a.masks != nullptr) {
    for (int64_t i = threadIdx.x; i < vocab; i += kThreads)
      a.masks[static_cast<int64_t>(row) * vocab + i] = i == token;
    if (threadIdx.x == 0) a.searches[row] = static_cast<uint8_t>(GpuSampler::KeptSetSearch::kNone);
  }
  if (threadIdx.x == 0) a.tokens[row] = token;

  // Logprobs of the raw distribution.
  if (p.logprobs < 0) return;
  const double lse = raw_log_sum_exp(raw, vocab, sh);
  LogprobRecord& record = a.records[row];
  if (threadIdx.x == 0)
    record.logprob = static_cast<float>(__dsub_rn(static_cast<double>(raw[token]), lse));
  const int32_t n = static_cast<int32_t>(min(static_cast<int64_t>(p.logprobs), vocab));
  top_logprobs(raw, vocab, n, lse, sh, record.top_ids, record.top_logprobs);
}

// What prompt_logprobs() reads back for one row.
struct PromptLogprobRecord {
  float logprob;
  int32_t rank;
  int32_t top_ids[kMaxLogprobs];
  float top_logprobs[kMaxLogprobs];
};

// One block per row of raw logits: the log-softmax of the row's target (the formula of
// sample_kernel's logprobs), its rank (1 + the tokens whose logit is larger) and the `top`
// most likely tokens by rounds of argmax.
__global__ void __launch_bounds__(kThreads, 1)
    prompt_logprob_kernel(const float* logits, int64_t vocab, const int32_t* targets, int32_t top,
                          PromptLogprobRecord* records) {
  __shared__ SharedState sh;
  const float* raw = logits + static_cast<int64_t>(blockIdx.x) * vocab;
  const int32_t target = targets[blockIdx.x];
  const float x = raw[target];
  double larger = 0;  // exact: counts stay far below 2^53
  for_each_token(RowLogits{raw}, vocab, [&](int64_t, float v, bool inside) {
    if (inside && v > x) larger += 1.0;
  });
  larger = block_sum(larger, sh);
  const double lse = raw_log_sum_exp(raw, vocab, sh);
  PromptLogprobRecord& record = records[blockIdx.x];
  if (threadIdx.x == 0) {
    record.logprob = static_cast<float>(__dsub_rn(static_cast<double>(x), lse));
    record.rank = 1 + static_cast<int32_t>(larger);
  }
  const int32_t n = static_cast<int32_t>(min(static_cast<int64_t>(top), vocab));
  top_logprobs(raw, vocab, n, lse, sh, record.top_ids, record.top_logprobs);
}

constexpr size_t align_up(size_t n, size_t alignment) {
  return (n + alignment - 1) / alignment * alignment;
}

}  // namespace

struct GpuSampler::Buffers {
  int64_t vocab = 0;
  int32_t max_rows = 0;
  int32_t scratch_rows = 0;
  int64_t max_history = 0;
  size_t staging_bytes = 0;
  std::vector<int32_t> wave_starts;  // the last call's launches: first row of each, then n
  std::vector<int32_t> bias_tokens;  // validation scratch

  float* scratch = nullptr;
  int32_t* counts = nullptr;
  std::byte* device_staging = nullptr;
  // Two pinned staging buffers used in turn; a buffer is rewritten only after the upload that
  // last read it completed (that of two calls ago, long done in a step loop).
  std::byte* host_staging[2] = {nullptr, nullptr};
  cudaEvent_t uploaded[2] = {nullptr, nullptr};
  bool upload_pending[2] = {false, false};
  int next_staging = 0;
  // Results: tokens [max_rows] then LogprobRecord [max_rows], on the device, and pinned for the
  // last two calls in turn (a caller may sample again before it reads the results of a call).
  std::byte* device_results = nullptr;
  std::byte* host_results[2] = {nullptr, nullptr};
  cudaEvent_t results_copied[2] = {nullptr, nullptr};
  uint8_t* masks = nullptr;
  uint8_t* searches = nullptr;
  bool record_masks = false;
  // prompt_logprobs(): targets then records, on the device and pinned, allocated on first use.
  std::byte* device_prompt = nullptr;
  std::byte* host_prompt = nullptr;
  static constexpr size_t prompt_records_offset() {
    return align_up(sizeof(int32_t) * kMaxPromptLogprobRows, 16);
  }
  static constexpr size_t prompt_bytes() {
    return prompt_records_offset() + sizeof(PromptLogprobRecord) * kMaxPromptLogprobRows;
  }

  // The last two calls (call c in slot c % 2), for results(), results_of() and last_masks().
  int64_t calls = 0;
  int32_t last_rows[2] = {0, 0};
  std::vector<int32_t> last_logprobs[2];
  bool last_recorded_masks = false;
  int last_slot() const { return static_cast<int>((calls + 1) % 2); }

  size_t records_offset() const { return align_up(sizeof(int32_t) * max_rows, 16); }
  int32_t* device_tokens() const { return reinterpret_cast<int32_t*>(device_results); }
  LogprobRecord* device_records() const {
    return reinterpret_cast<LogprobRecord*>(device_results + records_offset());
  }

  // Frees whatever was allocated; errors are ignored (also used on a failed construction).
  void release() {
    cudaFree(scratch);
    cudaFree(counts);
    cudaFree(device_staging);
    cudaFree(device_results);
    cudaFree(masks);
    cudaFree(searches);
    cudaFree(device_prompt);
    for (int s = 0; s < 2; ++s) {
      cudaFreeHost(host_results[s]);
      if (results_copied[s] != nullptr) cudaEventDestroy(results_copied[s]);
    }
    cudaFreeHost(host_prompt);
    for (int s = 0; s < 2; ++s) {
      cudaFreeHost(host_staging[s]);
      if (uploaded[s] != nullptr) cudaEventDestroy(uploaded[s]);
    }
  }
};

int32_t GpuSampler::default_scratch_rows(int32_t max_rows, int device) {
  int sms = 0;
  L2KV_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(1, std::min(max_rows, sms));
}

GpuSampler::GpuSampler(int64_t vocab, int32_t max_rows, int64_t max_history_tokens,
                       int32_t scratch_rows) {
  if (vocab < 1 || vocab > std::numeric_limits<int32_t>::max() || max_rows < 1 ||
      max_history_tokens < 0 || scratch_rows < 1 || scratch_rows > max_rows)
    throw Error("GpuSampler: invalid sizes (vocab " + std::to_string(vocab) + ", max_rows " +
                std::to_string(max_rows) + ", max_history_tokens " +
                std::to_string(max_history_tokens) + ", scratch_rows " +
                std::to_string(scratch_rows) + ")");
  b_ = new Buffers;
  Buffers& b = *b_;
  b.vocab = vocab;
  b.max_rows = max_rows;
  b.scratch_rows = scratch_rows;
  b.max_history = max_history_tokens;
  b.staging_bytes = sizeof(RowParams) * max_rows +
                    sizeof(BiasEntry) * static_cast<size_t>(max_rows) * kMaxLogitBias +
                    sizeof(int32_t) * max_history_tokens;
  const size_t row_elems = static_cast<size_t>(scratch_rows) * vocab;
  const size_t results_bytes = b.records_offset() + sizeof(LogprobRecord) * max_rows;
  try {
    L2KV_CUDA_CHECK(cudaMalloc(&b.scratch, sizeof(float) * row_elems));
    L2KV_CUDA_CHECK(cudaMalloc(&b.counts, sizeof(int32_t) * row_elems));
    L2KV_CUDA_CHECK(cudaMalloc(&b.device_staging, b.staging_bytes));
    L2KV_CUDA_CHECK(cudaMalloc(&b.device_results, results_bytes));
    for (int s = 0; s < 2; ++s) {
      L2KV_CUDA_CHECK(cudaMallocHost(&b.host_results[s], results_bytes));
      std::memset(b.host_results[s], 0, results_bytes);
      L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&b.results_copied[s], cudaEventDisableTiming));
    }
    for (int s = 0; s < 2; ++s) {
      L2KV_CUDA_CHECK(cudaMallocHost(&b.host_staging[s], b.staging_bytes));
      L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&b.uploaded[s], cudaEventDisableTiming));
    }
    // The kernel leaves the counts zero after each call; they start zero here.
    L2KV_CUDA_CHECK(cudaMemset(b.counts, 0, sizeof(int32_t) * row_elems));
    L2KV_CUDA_CHECK(cudaMemset(b.device_results, 0, results_bytes));
  } catch (...) {
    b.release();
    delete b_;
    throw;
  }
}

GpuSampler::~GpuSampler() {
  b_->release();
  delete b_;
}

int64_t GpuSampler::device_bytes() const {
  const Buffers& b = *b_;
  return static_cast<int64_t>(
      (sizeof(float) + sizeof(int32_t)) * static_cast<size_t>(b.scratch_rows) * b.vocab +
      b.staging_bytes + b.records_offset() + sizeof(LogprobRecord) * b.max_rows);
}

int32_t GpuSampler::last_launches() const {
  return static_cast<int32_t>(b_->wave_starts.empty() ? 0 : b_->wave_starts.size() - 1);
}

int64_t GpuSampler::sample(const float* d_logits, std::span<const SamplingRow> rows,
                           cudaStream_t stream) {
  Buffers& b = *b_;
  if (rows.size() > static_cast<size_t>(b.max_rows))
    throw Error("GpuSampler: " + std::to_string(rows.size()) + " rows, at most " +
                std::to_string(b.max_rows));
  if (!rows.empty() && d_logits == nullptr) throw Error("GpuSampler: null logits");
  const int32_t n = static_cast<int32_t>(rows.size());

  // Validate everything before touching the staging buffer.
  int64_t history = 0, biases = 0;
  for (const SamplingRow& row : rows) {
    if (row.params == nullptr) throw Error("GpuSampler: a row has no SamplingParams");
    const SamplingParams& p = *row.params;
    if (!(p.temperature >= 0.f) || p.logprobs > kMaxLogprobs || !(p.top_p > 0.f) ||
        p.logit_bias.size() > static_cast<size_t>(kMaxLogitBias))
      throw Error("GpuSampler: invalid SamplingParams (call SamplingParams::validate)");
    // Distinct tokens: the kernel gives each biased token to one thread.
    b.bias_tokens.clear();
    for (const auto& [t, bias] : p.logit_bias) {
      if (t < 0 || t >= b.vocab)
        throw Error("GpuSampler: logit_bias token " + std::to_string(t) + " outside [0, " +
                    std::to_string(b.vocab) + ")");
      b.bias_tokens.push_back(t);
    }
    std::sort(b.bias_tokens.begin(), b.bias_tokens.end());
    if (std::adjacent_find(b.bias_tokens.begin(), b.bias_tokens.end()) != b.bias_tokens.end())
      throw Error("GpuSampler: logit_bias repeats a token (call SamplingParams::validate)");
    biases += static_cast<int64_t>(p.logit_bias.size());
    if (!p.penalized()) continue;
    history += static_cast<int64_t>(row.prompt_tokens.size() + row.output_tokens.size());
    for (auto tokens : {row.prompt_tokens, row.output_tokens})
      for (int32_t t : tokens)
        if (t < 0 || t >= b.vocab)
          throw Error("GpuSampler: history token " + std::to_string(t) + " outside [0, " +
                      std::to_string(b.vocab) + ")");
  }
  if (history > b.max_history)
    throw Error("GpuSampler: " + std::to_string(history) + " history tokens, at most " +
                std::to_string(b.max_history));

  const int64_t call = b.calls++;
  const int result_slot = static_cast<int>(call % 2);
  b.last_rows[result_slot] = n;
  std::vector<int32_t>& logprobs = b.last_logprobs[result_slot];
  logprobs.assign(n, -1);
  b.last_recorded_masks = b.record_masks;
  b.wave_starts.clear();
  if (n == 0) return call;

  // Pack: RowParams[n], then the bias entries, then the histories of the penalized rows.
  // Adjusted rows take scratch slots in order; a row that finds the pool full starts a wave.
  const int slot = b.next_staging;
  b.next_staging = 1 - slot;
  if (b.upload_pending[slot]) L2KV_CUDA_CHECK(cudaEventSynchronize(b.uploaded[slot]));
  std::byte* staging = b.host_staging[slot];
  auto* params = reinterpret_cast<RowParams*>(staging);
  const size_t bias_start = sizeof(RowParams) * n;
  const size_t history_start = bias_start + sizeof(BiasEntry) * biases;
  auto* bias_out = reinterpret_cast<BiasEntry*>(staging + bias_start);
  auto* history_out = reinterpret_cast<int32_t*>(staging + history_start);
  int64_t offset = 0, bias_offset = 0;
  int32_t slots_used = 0;
  b.wave_starts.push_back(0);
  for (int32_t r = 0; r < n; ++r) {
    const SamplingRow& row = rows[r];
    const SamplingParams& sp = *row.params;
    RowParams& p = params[r];
    p = RowParams{};
    p.seed = row.seed;
    p.step = row.step;
    p.temperature = sp.temperature;
    p.top_p = sp.top_p;
    p.top_k = sp.top_k;
    p.logprobs = sp.logprobs;
    p.repetition_penalty = sp.repetition_penalty;
    p.presence_penalty = sp.presence_penalty;
    p.frequency_penalty = sp.frequency_penalty;
    p.greedy = sp.greedy();
    p.use_top_p = sp.top_p < 1.f;
    p.use_min_p = sp.min_p > 0.f;
    p.log_min_p = std::log(static_cast<double>(sp.min_p));
    p.penalized = sp.penalized();
    p.scratch_slot = -1;
    if (sp.adjusts_logits()) {
      if (slots_used == b.scratch_rows) {
        b.wave_starts.push_back(r);
        slots_used = 0;
      }
      p.scratch_slot = slots_used++;
    }
    p.history_offset = offset;
    if (p.penalized) {
      p.prompt_count = static_cast<int32_t>(row.prompt_tokens.size());
      p.output_count = static_cast<int32_t>(row.output_tokens.size());
      std::copy(row.prompt_tokens.begin(), row.prompt_tokens.end(), history_out + offset);
      offset += p.prompt_count;
      std::copy(row.output_tokens.begin(), row.output_tokens.end(), history_out + offset);
      offset += p.output_count;
    }
    p.bias_offset = bias_offset;
    p.bias_count = static_cast<int32_t>(sp.logit_bias.size());
    for (const auto& [t, bias] : sp.logit_bias) bias_out[bias_offset++] = BiasEntry{t, bias};
    logprobs[r] = sp.logprobs;
  }
  b.wave_starts.push_back(n);
  const size_t bytes = history_start + sizeof(int32_t) * offset;
  L2KV_CUDA_CHECK(
      cudaMemcpyAsync(b.device_staging, staging, bytes, cudaMemcpyHostToDevice, stream));
  L2KV_CUDA_CHECK(cudaEventRecord(b.uploaded[slot], stream));
  b.upload_pending[slot] = true;

  KernelArgs args{};
  args.logits = d_logits;
  args.vocab = b.vocab;
  args.rows = reinterpret_cast<const RowParams*>(b.device_staging);
  args.biases = reinterpret_cast<const BiasEntry*>(b.device_staging + bias_start);
  args.history = reinterpret_cast<const int32_t*>(b.device_staging + history_start);
  args.scratch = b.scratch;
  args.counts = b.counts;
  args.tokens = b.device_tokens();
  args.records = b.device_records();
  args.masks = b.record_masks ? b.masks : nullptr;
  args.searches = b.record_masks ? b.searches : nullptr;
  // Waves run in stream order, so each reuses the scratch pool after the previous one.
  for (size_t w = 0; w + 1 < b.wave_starts.size(); ++w) {
    args.first_row = b.wave_starts[w];
    sample_kernel<<<b.wave_starts[w + 1] - b.wave_starts[w], kThreads, 0, stream>>>(args);
    L2KV_CUDA_CHECK_LAUNCH();
  }

  // One read-back: all tokens, then the records of rows 0..last row asking for logprobs.
  int32_t last_logprob_row = -1;
  for (int32_t r = 0; r < n; ++r)
    if (logprobs[r] >= 0) last_logprob_row = r;
  const size_t read_bytes =
      last_logprob_row < 0 ? sizeof(int32_t) * n
                           : b.records_offset() + sizeof(LogprobRecord) * (last_logprob_row + 1);
  L2KV_CUDA_CHECK(cudaMemcpyAsync(b.host_results[result_slot], b.device_results, read_bytes,
                                  cudaMemcpyDeviceToHost, stream));
  L2KV_CUDA_CHECK(cudaEventRecord(b.results_copied[result_slot], stream));
  return call;
}

std::vector<SampledToken> GpuSampler::results(cudaStream_t stream) const {
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  return read_results(b_->last_slot());
}

std::vector<SampledToken> GpuSampler::results_of(int64_t call) const {
  const Buffers& b = *b_;
  if (call < 0 || call >= b.calls || call + 2 < b.calls)
    throw Error("GpuSampler: the results of call " + std::to_string(call) +
                " are not kept (calls so far: " + std::to_string(b.calls) + ")");
  const int slot = static_cast<int>(call % 2);
  if (b.last_rows[slot] > 0) L2KV_CUDA_CHECK(cudaEventSynchronize(b.results_copied[slot]));
  return read_results(slot);
}

std::vector<SampledToken> GpuSampler::read_results(int slot) const {
  const Buffers& b = *b_;
  const auto* tokens = reinterpret_cast<const int32_t*>(b.host_results[slot]);
  const auto* records =
      reinterpret_cast<const LogprobRecord*>(b.host_results[slot] + b.records_offset());
  const std::vector<int32_t>& logprobs = b.last_logprobs[slot];
  std::vector<SampledToken> out(b.last_rows[slot]);
  for (int32_t r = 0; r < b.last_rows[slot]; ++r) {
    out[r].token = tokens[r];
    if (logprobs[r] < 0) continue;
    const int64_t n = std::min<int64_t>(logprobs[r], b.vocab);
    out[r].logprob = records[r].logprob;
    for (int64_t k = 0; k < n; ++k)
      out[r].top_logprobs.emplace_back(records[r].top_ids[k], records[r].top_logprobs[k]);
  }
  return out;
}

void GpuSampler::reserve_prompt_logprobs() {
  Buffers& b = *b_;
  if (b.device_prompt != nullptr) return;
  L2KV_CUDA_CHECK(cudaMalloc(&b.device_prompt, Buffers::prompt_bytes()));
  L2KV_CUDA_CHECK(cudaMallocHost(&b.host_prompt, Buffers::prompt_bytes()));
}

std::vector<PromptLogprob> GpuSampler::prompt_logprobs(const float* d_logits,
                                                       std::span<const int32_t> targets,
                                                       int32_t top, cudaStream_t stream) {
  Buffers& b = *b_;
  const auto rows = static_cast<int32_t>(targets.size());
  if (rows > kMaxPromptLogprobRows || top < 0 || top > kMaxLogprobs)
    throw Error("GpuSampler::prompt_logprobs: " + std::to_string(rows) + " rows (at most " +
                std::to_string(kMaxPromptLogprobRows) + "), top " + std::to_string(top) +
                " (0 to " + std::to_string(kMaxLogprobs) + ")");
  for (const int32_t t : targets)
    if (t < 0 || t >= b.vocab)
      throw Error("GpuSampler::prompt_logprobs: token " + std::to_string(t) +
                  " outside a vocabulary of " + std::to_string(b.vocab));
  if (rows == 0) return {};
  reserve_prompt_logprobs();
  // The pinned targets are rewritten only after the previous call synchronized (below).
  std::memcpy(b.host_prompt, targets.data(), sizeof(int32_t) * rows);
  L2KV_CUDA_CHECK(cudaMemcpyAsync(b.device_prompt, b.host_prompt, sizeof(int32_t) * rows,
                                  cudaMemcpyHostToDevice, stream));
  auto* records =
      reinterpret_cast<PromptLogprobRecord*>(b.device_prompt + Buffers::prompt_records_offset());
  prompt_logprob_kernel<<<rows, kThreads, 0, stream>>>(
      d_logits, b.vocab, reinterpret_cast<const int32_t*>(b.device_prompt), top, records);
  L2KV_CUDA_CHECK_LAUNCH();
  L2KV_CUDA_CHECK(cudaMemcpyAsync(b.host_prompt + Buffers::prompt_records_offset(), records,
                                  sizeof(PromptLogprobRecord) * rows, cudaMemcpyDeviceToHost,
                                  stream));
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  const auto* host_records = reinterpret_cast<const PromptLogprobRecord*>(
      b.host_prompt + Buffers::prompt_records_offset());
  const int32_t n = static_cast<int32_t>(std::min<int64_t>(top, b.vocab));
  std::vector<PromptLogprob> out(static_cast<size_t>(rows));
  for (int32_t r = 0; r < rows; ++r) {
    out[r].token = targets[r];
    out[r].logprob = host_records[r].logprob;
    out[r].rank = host_records[r].rank;
    for (int32_t k = 0; k < n; ++k)
      out[r].top_logprobs.emplace_back(host_records[r].top_ids[k], host_records[r].top_logprobs[k]);
  }
  return out;
}

const int32_t* GpuSampler::device_tokens() const {
  return b_->device_tokens();
}

namespace {

__global__ void write_pending_ids_kernel(int32_t* ids, int32_t count, const int32_t* sampled) {
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += gridDim.x * blockDim.x)
    if (ids[i] < 0) ids[i] = sampled[-ids[i] - 1];
}

}  // namespace

void GpuSampler::write_pending_ids(int32_t* ids, int32_t count, cudaStream_t stream) const {
  if (count <= 0) return;
  const int32_t threads = 256;
  const int32_t blocks = std::min<int32_t>((count + threads - 1) / threads, 64);
  write_pending_ids_kernel<<<blocks, threads, 0, stream>>>(ids, count, b_->device_tokens());
  L2KV_CUDA_CHECK_LAUNCH();
}

void GpuSampler::set_record_masks(bool on) {
  Buffers& b = *b_;
  if (on && b.masks == nullptr) {
    L2KV_CUDA_CHECK(cudaMalloc(&b.masks, static_cast<size_t>(b.max_rows) * b.vocab));
    L2KV_CUDA_CHECK(cudaMalloc(&b.searches, static_cast<size_t>(b.max_rows)));
  }
  b.record_masks = on;
}

std::vector<GpuSampler::KeptSetSearch> GpuSampler::last_kept_set_searches(
    cudaStream_t stream) const {
  const Buffers& b = *b_;
  if (!b.last_recorded_masks)
    throw Error("GpuSampler: the last sample() did not record masks (set_record_masks)");
  std::vector<KeptSetSearch> out(static_cast<size_t>(b.last_rows[b.last_slot()]));
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<uint8_t> raw(out.size());
  if (!raw.empty())
    L2KV_CUDA_CHECK(cudaMemcpy(raw.data(), b.searches, raw.size(), cudaMemcpyDeviceToHost));
  for (size_t r = 0; r < out.size(); ++r) out[r] = static_cast<KeptSetSearch>(raw[r]);
  return out;
}

std::vector<uint8_t> GpuSampler::last_masks(cudaStream_t stream) const {
  const Buffers& b = *b_;
  if (!b.last_recorded_masks)
    throw Error("GpuSampler: the last sample() did not record masks (set_record_masks)");
  std::vector<uint8_t> out(static_cast<size_t>(b.last_rows[b.last_slot()]) * b.vocab);
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (!out.empty())
    L2KV_CUDA_CHECK(cudaMemcpy(out.data(), b.masks, out.size(), cudaMemcpyDeviceToHost));
  return out;
}

}  // namespace l2kv
