#include "gpu_test_support.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <string>

namespace l2kv::testing {

bool gpu_required() {
  const char* v = std::getenv("L2KV_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

bool quick_mode() {
  return std::getenv("L2KV_TEST_QUICK") != nullptr;
}

namespace {

// The group's query rows as the kernels see them (rounded to the dtype).
std::vector<std::vector<double>> group_queries(const DecodeProblem& p, int32_t seq,
                                               int32_t kv_head) {
  const DecodeProblemConfig& c = p.config;
  const int32_t group = c.num_q_heads / c.num_kv_heads;
  std::vector<std::vector<double>> rows(group, std::vector<double>(c.head_dim));
  for (int32_t h = 0; h < group; ++h) {
    const int64_t base =
        (static_cast<int64_t>(seq) * c.num_q_heads + kv_head * group + h) * c.head_dim;
    for (int32_t i = 0; i < c.head_dim; ++i)
      rows[h][i] = dtype_bits_to_float(c.dtype, p.q[base + i]);
  }
  return rows;
}

// A K row (in dtype bits) whose logit is `logit` for every query head of the group.
std::vector<uint16_t> key_with_logit(const DecodeProblem& p, int32_t seq, int32_t kv_head,
                                     double logit) {
  const double scale = 1.f / std::sqrt(static_cast<float>(p.config.head_dim));  // as params'
  const std::vector<double> k = key_with_dot(group_queries(p, seq, kv_head), logit / scale);
  std::vector<uint16_t> bits(k.size());
  for (size_t i = 0; i < k.size(); ++i)
    bits[i] = float_to_dtype_bits(p.config.dtype, static_cast<float>(k[i]));
  return bits;
}

// Poison K for every (sequence, KV head): its logit beats every real token of that sequence.
// A last block's slots beyond the length take their own sequence's; slot i of the unused blocks
// takes sequence i % batch's, so whichever sequence a wrong block lookup serves, some read slot
// dominates it.
void plant_poison(DecodeProblem& p) {
  const DecodeProblemConfig& c = p.config;
  const int32_t batch = static_cast<int32_t>(c.seq_lens.size());
  std::vector<std::vector<uint16_t>> keys(static_cast<size_t>(batch) * c.num_kv_heads);
  for (int32_t s = 0; s < batch; ++s)
    for (int32_t h = 0; h < c.num_kv_heads; ++h)
      keys[static_cast<size_t>(s) * c.num_kv_heads + h] = key_with_logit(p, s, h, p.poison_logit());
  const uint16_t poison_v = float_to_dtype_bits(c.dtype, kPoisonValue);
  auto plant = [&](int64_t offset, int32_t seq, int32_t kv_head) {
    const auto& k = keys[static_cast<size_t>(seq) * c.num_kv_heads + kv_head];
    std::copy(k.begin(), k.end(), p.k_pool.begin() + offset);
    std::fill_n(p.v_pool.begin() + offset, c.head_dim, poison_v);
  };
  for (int32_t s = 0; s < batch; ++s) {
    const int32_t len = c.seq_lens[s];
    const int32_t end = (len + c.block_size - 1) / c.block_size * c.block_size;
    for (int32_t t = len; t < end; ++t)
      for (int32_t h = 0; h < c.num_kv_heads; ++h) plant(p.token_offset(s, t, h), s, h);
  }
  int32_t slot_index = 0;
  for (int32_t block : p.unused_blocks)
    for (int32_t slot = 0; slot < c.block_size; ++slot, ++slot_index)
      for (int32_t h = 0; h < c.num_kv_heads; ++h)
        plant(p.slot_offset(block, slot, h), slot_index % batch, h);
}

void plant_needles(DecodeProblem& p, std::mt19937_64& rng) {
  const DecodeProblemConfig& c = p.config;
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  for (int32_t s = 0; s < static_cast<int32_t>(c.seq_lens.size()); ++s) {
    const std::vector<int32_t> positions = p.needles_of(s);
    if (positions.empty()) continue;
    for (int32_t h = 0; h < c.num_kv_heads; ++h) {
      const std::vector<uint16_t> k = key_with_logit(p, s, h, p.needle_logit());
      for (int32_t t : positions) {
        const int64_t offset = p.token_offset(s, t, h);
        std::copy(k.begin(), k.end(), p.k_pool.begin() + offset);
        for (int32_t i = 0; i < c.head_dim; ++i)
          p.v_pool[offset + i] = float_to_dtype_bits(c.dtype, kNeedleValueScale * uniform(rng));
      }
    }
  }
}

}  // namespace

std::vector<double> key_with_dot(const std::vector<std::vector<double>>& q_rows,
                                 double dot_target) {
  const size_t rows = q_rows.size();
  const size_t dim = q_rows.empty() ? 0 : q_rows[0].size();
  // Solve (Q Q^T) a = t by Gaussian elimination with partial pivoting; a is at most 8 long.
  std::vector<std::vector<double>> gram(rows, std::vector<double>(rows + 1, dot_target));
  for (size_t i = 0; i < rows; ++i)
    for (size_t j = 0; j < rows; ++j)
      gram[i][j] = std::inner_product(q_rows[i].begin(), q_rows[i].end(), q_rows[j].begin(), 0.0);
  double largest = 0;
  for (size_t i = 0; i < rows; ++i) largest = std::max(largest, gram[i][i]);
  for (size_t col = 0; col < rows; ++col) {
    size_t pivot = col;
    for (size_t r = col + 1; r < rows; ++r)
      if (std::abs(gram[r][col]) > std::abs(gram[pivot][col])) pivot = r;
    std::swap(gram[col], gram[pivot]);
    if (!(std::abs(gram[col][col]) > 1e-12 * largest))
      throw std::invalid_argument("key_with_dot: query rows are linearly dependent");
    for (size_t r = 0; r < rows; ++r) {
      if (r == col) continue;
      const double f = gram[r][col] / gram[col][col];
      for (size_t j = col; j <= rows; ++j) gram[r][j] -= f * gram[col][j];
    }
  }
  std::vector<double> k(dim, 0.0);
  for (size_t r = 0; r < rows; ++r) {
    const double a = gram[r][rows] / gram[r][r];
    for (size_t i = 0; i < dim; ++i) k[i] += a * q_rows[r][i];
  }
  return k;
}

DecodeProblem DecodeProblem::make(const DecodeProblemConfig& config) {
  DecodeProblem p;
  p.config = config;
  std::mt19937_64 rng(config.seed);
  std::uniform_real_distribution<float> uniform(-1.f, 1.f);
  const int32_t batch = static_cast<int32_t>(config.seq_lens.size());
  int32_t used_blocks = 0;
  for (int32_t len : config.seq_lens) {
    const int32_t blocks = (len + config.block_size - 1) / config.block_size;
    p.max_blocks_per_seq = std::max(p.max_blocks_per_seq, blocks);
    used_blocks += blocks;
  }
  p.max_blocks_per_seq = std::max(p.max_blocks_per_seq, 1) + 1;  // a spare column stays -1
  p.num_blocks = used_blocks + config.spare_blocks;
  std::vector<int32_t> physical(p.num_blocks);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  p.block_table.assign(static_cast<size_t>(batch) * p.max_blocks_per_seq, -1);
  int32_t next = 0;
  for (int32_t s = 0; s < batch; ++s) {
    const int32_t blocks = (config.seq_lens[s] + config.block_size - 1) / config.block_size;
    for (int32_t b = 0; b < blocks; ++b)
      p.block_table[static_cast<size_t>(s) * p.max_blocks_per_seq + b] = physical[next++];
  }
  p.unused_blocks.assign(physical.begin() + next, physical.end());
  const int64_t pool_elems = static_cast<int64_t>(p.num_blocks) * config.block_size *
                             config.num_kv_heads * config.head_dim;
  auto fill = [&](std::vector<uint16_t>& v, int64_t n, float scale) {
    v.resize(n);
    for (auto& x : v) x = float_to_dtype_bits(config.dtype, uniform(rng) * scale);
  };
  fill(p.q, static_cast<int64_t>(batch) * config.num_q_heads * config.head_dim, config.q_scale);
  fill(p.k_pool, pool_elems, 1.f);
  fill(p.v_pool, pool_elems, 1.f);
  if (batch > 0 && config.poison_unread_slots) plant_poison(p);
  plant_needles(p, rng);
  return p;
}

int64_t DecodeProblem::slot_offset(int32_t physical_block, int32_t slot, int32_t kv_head) const {
  PagedKvCache shape;
  shape.block_size = config.block_size;
  shape.num_kv_heads = config.num_kv_heads;
  shape.head_dim = config.head_dim;
  shape.layout = config.layout;
  return shape.offset(physical_block, slot, kv_head);
}

int64_t DecodeProblem::token_offset(int32_t seq, int32_t token, int32_t kv_head) const {
  const int32_t physical =
      block_table[static_cast<size_t>(seq) * max_blocks_per_seq + token / config.block_size];
  return slot_offset(physical, token % config.block_size, kv_head);
}

std::vector<int32_t> DecodeProblem::needles_of(int32_t seq) const {
  const int32_t len = config.seq_lens[seq];
  std::vector<int32_t> positions;
  for (int32_t pos : config.needle_positions) {
    const int32_t t = pos < 0 ? len + pos : pos;
    if (t >= 0 && t < len) positions.push_back(t);
  }
  std::sort(positions.begin(), positions.end());
  positions.erase(std::unique(positions.begin(), positions.end()), positions.end());
  return positions;
}

double DecodeProblem::needle_logit() const {
  // Random logits have standard deviation q_scale / 3 (q uniform in +-q_scale, k in +-1, the
  // 1/sqrt(head_dim) scale undoes the sum's growth). With every random logit below 8 sigma, a
  // needle outweighs all max_len tokens together by e^4.
  const double sigma = config.q_scale / 3.0;
  return 8 * sigma + std::log(std::max(max_seq_len(), 1)) + 4;
}

double DecodeProblem::poison_logit() const {
  return needle_logit() + 30;  // e^30: a poison slot read outweighs needles and all
}

int32_t DecodeProblem::max_seq_len() const {
  return config.seq_lens.empty()
             ? 0
             : *std::max_element(config.seq_lens.begin(), config.seq_lens.end());
}

DecodeAttentionParams DecodeProblem::host_params() {
  DecodeAttentionParams params;
  params.q = q.data();
  params.out = nullptr;
  params.num_q_heads = config.num_q_heads;
  params.softmax_scale = 1.f / std::sqrt(static_cast<float>(config.head_dim));
  params.max_seq_len = max_seq_len();
  PagedKvCache& kv = params.kv;
  kv.k_pool = k_pool.data();
  kv.v_pool = v_pool.data();
  kv.block_table = block_table.data();
  kv.seq_lens = config.seq_lens.data();
  kv.num_blocks = num_blocks;
  kv.block_size = config.block_size;
  kv.num_kv_heads = config.num_kv_heads;
  kv.head_dim = config.head_dim;
  kv.batch_size = static_cast<int32_t>(config.seq_lens.size());
  kv.max_blocks_per_seq = max_blocks_per_seq;
  kv.layout = config.layout;
  kv.dtype = config.dtype;
  return params;
}

PrefillRows prefill_rows(const DecodeProblem& host, const std::vector<PrefillChunk>& chunks) {
  PrefillRows rows;
  for (const PrefillChunk& ch : chunks) {
    const auto table = host.block_table.begin() + int64_t{ch.seq} * host.max_blocks_per_seq;
    for (int32_t i = 0; i < ch.num_tokens; ++i) {
      rows.block_table.insert(rows.block_table.end(), table, table + host.max_blocks_per_seq);
      rows.lens.push_back(ch.first_position + i + 1);
    }
  }
  return rows;
}

DecodeAttentionParams PrefillRows::reference_params(DecodeAttentionParams params,
                                                    const void* q) const {
  params.q = q;
  params.kv.block_table = block_table.data();
  params.kv.seq_lens = lens.data();
  params.kv.batch_size = static_cast<int32_t>(lens.size());
  params.max_seq_len = *std::max_element(lens.begin(), lens.end());
  return params;
}

namespace {
template <typename T>
T* upload(const std::vector<T>& v, std::vector<void*>& allocations) {
  T* ptr = testing::upload(v);
  allocations.push_back(ptr);
  return ptr;
}
}  // namespace

DeviceDecodeProblem::DeviceDecodeProblem(DecodeProblem& host) {
  params_ = host.host_params();
  params_.q = upload(host.q, allocations_);
  params_.kv.k_pool = upload(host.k_pool, allocations_);
  params_.kv.v_pool = upload(host.v_pool, allocations_);
  params_.kv.block_table = upload(host.block_table, allocations_);
  params_.kv.seq_lens = upload(host.config.seq_lens, allocations_);
  out_elems_ = host.q.size();
  void* out = nullptr;
  L2KV_CUDA_CHECK(cudaMalloc(&out, out_elems_ * 2));
  allocations_.push_back(out);
  params_.out = out;
}

DeviceDecodeProblem::~DeviceDecodeProblem() {
  for (void* p : allocations_) cudaFree(p);
}

void DeviceDecodeProblem::poison_output() {
  L2KV_CUDA_CHECK(cudaMemset(params_.out, 0xff, out_elems_ * 2));  // NaN in fp16 and bf16
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
}

std::vector<float> DeviceDecodeProblem::download_output() const {
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<uint16_t> bits(out_elems_);
  L2KV_CUDA_CHECK(cudaMemcpy(bits.data(), params_.out, out_elems_ * 2, cudaMemcpyDeviceToHost));
  std::vector<float> out(out_elems_);
  for (size_t i = 0; i < out_elems_; ++i) out[i] = dtype_bits_to_float(params_.kv.dtype, bits[i]);
  return out;
}

double max_row_relative_l2(DType dtype) {
  return dtype == DType::kFloat16 ? kFp16MaxRowRelativeL2 : kBf16MaxRowRelativeL2;
}

RowErrorStats compare_rows(const std::vector<float>& out, const std::vector<float>& ref,
                           int32_t row_len) {
  RowErrorStats s;
  const size_t n = std::min(out.size(), ref.size());
  s.non_finite = static_cast<int64_t>(std::max(out.size(), ref.size()) - n);
  const size_t stride = static_cast<size_t>(std::max(row_len, 1));
  for (size_t begin = 0; begin < n; begin += stride) {
    double diff2 = 0, ref2 = 0;
    for (size_t i = begin; i < std::min(n, begin + stride); ++i) {
      if (!std::isfinite(out[i])) {
        ++s.non_finite;
        continue;
      }
      const double d = static_cast<double>(out[i]) - ref[i];
      diff2 += d * d;
      ref2 += static_cast<double>(ref[i]) * ref[i];
      s.max_abs = std::max(s.max_abs, std::abs(d));
    }
    const double error = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
    if (s.worst_row < 0 || error > s.worst_row_relative_l2) {
      s.worst_row_relative_l2 = error;
      s.worst_row = static_cast<int64_t>(begin / stride);
    }
  }
  return s;
}

::testing::AssertionResult rows_match(const std::vector<float>& out, const std::vector<float>& ref,
                                      int32_t head_dim, int32_t num_q_heads, DType dtype,
                                      const std::string& variant) {
  const RowErrorStats s = compare_rows(out, ref, head_dim);
  const double bound = max_row_relative_l2(dtype);
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string test =
      info != nullptr ? std::string(info->test_suite_name()) + "." + info->name() : "none";
  std::string label = variant.empty() ? "-" : variant;
  std::replace(label.begin(), label.end(), ' ', '_');  // keep the line's fields split by spaces
  std::printf("[row-error] %s %s dtype=%s worst_row_rel_l2=%.2e bound=%.2e\n", test.c_str(),
              label.c_str(), std::string(dtype_name(dtype)).c_str(), s.worst_row_relative_l2,
              bound);
  std::fflush(stdout);
  if (s.non_finite == 0 && s.worst_row_relative_l2 <= bound) return ::testing::AssertionSuccess();
  const int32_t heads = std::max(num_q_heads, 1);
  return ::testing::AssertionFailure()
         << variant << ": " << s.non_finite << " non-finite outputs; worst row relative L2 "
         << s.worst_row_relative_l2 << " (bound " << bound << ") at row " << s.worst_row
         << " (sequence or prefill row " << s.worst_row / heads << ", query head "
         << s.worst_row % heads << "), max abs error " << s.max_abs;
}

DecodeProblemConfig two_kv_heads_config(DType dtype, int32_t head_dim, int32_t group, int32_t block,
                                        KvLayout layout) {
  DecodeProblemConfig c;
  c.dtype = dtype;
  c.head_dim = head_dim;
  c.num_kv_heads = 2;
  c.num_q_heads = 2 * group;
  c.block_size = block;
  c.layout = layout;
  return c;
}

std::vector<int32_t> random_lengths(int32_t batch, int32_t max_len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> len(1, max_len);
  std::vector<int32_t> lens(batch);
  for (int32_t i = 0; i < batch; ++i) {
    int32_t l = len(rng);
    if (i % 4 == 1) l = std::clamp(l / 16 * 16, 1, max_len);      // on a block boundary
    if (i % 4 == 2) l = std::clamp(l / 16 * 16 + 1, 1, max_len);  // one past it
    lens[i] = l;
  }
  return lens;
}

}  // namespace l2kv::testing
