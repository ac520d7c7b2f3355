#include "gpu_test_support.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>

namespace l2kv::testing {

bool gpu_required() {
  const char* v = std::getenv("L2KV_REQUIRE_GPU");
  return v != nullptr && std::string(v) == "1";
}

bool quick_mode() {
  return std::getenv("L2KV_TEST_QUICK") != nullptr;
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
  const int64_t pool_elems = static_cast<int64_t>(p.num_blocks) * config.block_size *
                             config.num_kv_heads * config.head_dim;
  auto fill = [&](std::vector<uint16_t>& v, int64_t n, float scale) {
    v.resize(n);
    for (auto& x : v) x = float_to_dtype_bits(config.dtype, uniform(rng) * scale);
  };
  fill(p.q, static_cast<int64_t>(batch) * config.num_q_heads * config.head_dim, config.q_scale);
  fill(p.k_pool, pool_elems, 1.f);
  fill(p.v_pool, pool_elems, 1.f);
  return p;
}

int32_t DecodeProblem::max_seq_len() const {
  return *std::max_element(config.seq_lens.begin(), config.seq_lens.end());
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

namespace {
template <typename T>
void* upload(const std::vector<T>& v, std::vector<void*>& allocations) {
  void* ptr = nullptr;
  L2KV_CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(v.size() * sizeof(T), 16)));
  allocations.push_back(ptr);
  L2KV_CUDA_CHECK(cudaMemcpy(ptr, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return ptr;
}
}  // namespace

DeviceDecodeProblem::DeviceDecodeProblem(DecodeProblem& host) {
  params_ = host.host_params();
  params_.q = upload(host.q, allocations_);
  params_.kv.k_pool = upload(host.k_pool, allocations_);
  params_.kv.v_pool = upload(host.v_pool, allocations_);
  params_.kv.block_table = static_cast<const int32_t*>(upload(host.block_table, allocations_));
  params_.kv.seq_lens = static_cast<const int32_t*>(upload(host.config.seq_lens, allocations_));
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
