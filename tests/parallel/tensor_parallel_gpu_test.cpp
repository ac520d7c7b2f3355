// Tensor parallelism on CUDA: the one-shot collectives against sums and copies made on the host,
// and the sharded engine against the fixtures' greedy tokens from transformers. Ranks share one
// GPU here (a DeviceGroup over a repeated device: one-shot kernels only, each rank a thread
// and a stream of its own); where the machine has several GPUs the same tests also run one
// rank per GPU, with NCCL for the messages above the one-shot size.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "engine/greedy_reference.h"
#include "gpu_test_support.h"
#include "l2kv/core/dtype.h"
#include "l2kv/engine/engine.h"
#include "l2kv/engine/tensor_parallel_cuda_runner.h"
#include "l2kv/parallel/device_communicator.h"
#include "model/tiny_checkpoint.h"

namespace l2kv {
namespace {

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(L2KV_TEST_SOURCE_DIR) / "model" / "fixtures";
using ops::CollectiveType;

int device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

// One call of a sequence the ranks make back to back: an all-reduce of `count` elements, or a
// gather of `count` bytes.
struct Call {
  CollectiveType type;
  int64_t count;
  bool gather = false;
  // NCCL's ring rounds its partial sums to the type at every hop, in an order of its own: its
  // sums are checked within that rounding instead of bit for bit.
  bool exact = true;
  int64_t bytes() const { return gather ? count : count * ops::collective_type_bytes(type); }
};

// Random inputs of every rank for `call` (as raw bytes: 16-bit codes, floats or bytes).
std::vector<std::vector<uint8_t>> random_inputs(const Call& call, int32_t ranks, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> value(-4.f, 4.f);
  std::vector<std::vector<uint8_t>> in(static_cast<size_t>(ranks));
  for (auto& bytes : in) {
    bytes.resize(static_cast<size_t>(call.bytes()));
    if (call.gather) {
      for (auto& b : bytes) b = static_cast<uint8_t>(rng());
    } else if (call.type == CollectiveType::kFloat32) {
      for (int64_t i = 0; i < call.count; ++i) {
        const float v = value(rng);
        std::memcpy(bytes.data() + 4 * i, &v, 4);
      }
    } else {
      const DType d = call.type == CollectiveType::kBFloat16 ? DType::kBFloat16 : DType::kFloat16;
      for (int64_t i = 0; i < call.count; ++i) {
        const uint16_t v = float_to_dtype_bits(d, value(rng));
        std::memcpy(bytes.data() + 2 * i, &v, 2);
      }
    }
  }
  return in;
}

// What rank `rank` must hold after `call`: the float32 sum in rank order, rounded to the type
// (every rank the same bits), or on rank 0 of a gather every rank's bytes in order.
std::vector<uint8_t> expected(const Call& call, const std::vector<std::vector<uint8_t>>& in,
                              int32_t rank) {
  if (call.gather) {
    if (rank != 0) return {};
    std::vector<uint8_t> all;
    for (const auto& b : in) all.insert(all.end(), b.begin(), b.end());
    return all;
  }
  std::vector<uint8_t> out(static_cast<size_t>(call.bytes()));
  for (int64_t i = 0; i < call.count; ++i) {
    float acc = 0.f;
    if (call.type == CollectiveType::kFloat32) {
      for (const auto& b : in) {
        float v;
        std::memcpy(&v, b.data() + 4 * i, 4);
        acc += v;
      }
      std::memcpy(out.data() + 4 * i, &acc, 4);
    } else {
      const DType d = call.type == CollectiveType::kBFloat16 ? DType::kBFloat16 : DType::kFloat16;
      for (const auto& b : in) {
        uint16_t v;
        std::memcpy(&v, b.data() + 2 * i, 2);
        acc += dtype_bits_to_float(d, v);
      }
      const uint16_t r = float_to_dtype_bits(d, acc);
      std::memcpy(out.data() + 2 * i, &r, 2);
    }
  }
  return out;
}

float element(CollectiveType type, const std::vector<uint8_t>& bytes, int64_t i) {
  if (type == CollectiveType::kFloat32) {
    float v;
    std::memcpy(&v, bytes.data() + 4 * i, 4);
    return v;
  }
  uint16_t v;
  std::memcpy(&v, bytes.data() + 2 * i, 2);
  return dtype_bits_to_float(type == CollectiveType::kBFloat16 ? DType::kBFloat16 : DType::kFloat16,
                             v);
}

// `got` is the sum of the inputs with each of the ranks' additions rounded to the type: within
// ranks + 1 unit roundoffs of the sum of magnitudes (a 1 % scale error or a missing rank is far
// outside it).
bool within_ring_rounding(const Call& call, const std::vector<std::vector<uint8_t>>& in,
                          const std::vector<uint8_t>& got) {
  const double unit = call.type == CollectiveType::kFloat32   ? 0x1p-24
                      : call.type == CollectiveType::kFloat16 ? 0x1p-11
                                                              : 0x1p-8;
  for (int64_t i = 0; i < call.count; ++i) {
    double sum = 0, magnitude = 0;
    for (const auto& b : in) {
      sum += element(call.type, b, i);
      magnitude += std::fabs(element(call.type, b, i));
    }
    const double bound = static_cast<double>(in.size() + 1) * unit * magnitude;
    if (!(std::fabs(element(call.type, got, i) - sum) <= bound)) return false;
  }
  return true;
}

// A host barrier of the test's rank threads that gives up (throws) once the group is aborted, so
// a rank that failed cannot leave the others waiting.
class HostBarrier {
 public:
  HostBarrier(int32_t ranks, const DeviceGroup& group) : ranks_(ranks), group_(group) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const int64_t generation = generation_;
    if (++arrived_ == ranks_) {
      arrived_ = 0, ++generation_;
      done_.notify_all();
      return;
    }
    while (generation_ == generation)
      if (done_.wait_for(lock, std::chrono::milliseconds(50)) == std::cv_status::timeout &&
          group_.aborted())
        throw Error("the group was aborted");
  }

 private:
  const int32_t ranks_;
  const DeviceGroup& group_;
  std::mutex mutex_;
  std::condition_variable done_;
  int32_t arrived_ = 0;
  int64_t generation_ = 0;
};

// Runs `calls` on every rank of `group` back to back (one stream each, no host wait between
// them), then the first two again three times as a captured CUDA graph with new inputs; returns
// what differs from `expected`, or an empty string.
std::string run_calls(const std::shared_ptr<DeviceGroup>& group, const std::vector<Call>& calls) {
  const int32_t ranks = group->size();
  std::vector<std::vector<std::vector<uint8_t>>> inputs;  // [call][rank]
  for (size_t c = 0; c < calls.size(); ++c)
    inputs.push_back(random_inputs(calls[c], ranks, 100 + c));
  std::vector<std::string> failures(static_cast<size_t>(ranks));
  // Ranks sharing a GPU: an allocation, a synchronous copy or a graph instantiation waits for
  // the device's running kernels, so none may overlap a peer's collective (which waits for this
  // rank): the ranks meet before each group of collectives.
  HostBarrier meet(ranks, *group);
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < ranks; ++r)
    threads.emplace_back([&, r] {
      std::string& failure = failures[static_cast<size_t>(r)];
      try {
        DeviceCommunicator comm(group, r);
        cudaStream_t stream = nullptr;
        L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        std::vector<void*> in(calls.size()), out(calls.size());
        for (size_t c = 0; c < calls.size(); ++c) {
          const auto bytes = static_cast<size_t>(calls[c].bytes());
          L2KV_CUDA_CHECK(cudaMalloc(&in[c], bytes));
          L2KV_CUDA_CHECK(cudaMalloc(&out[c], bytes * ranks));
          L2KV_CUDA_CHECK(cudaMemset(out[c], 0xff, bytes * ranks));  // poison
        }
        auto upload = [&](size_t c, const std::vector<std::vector<uint8_t>>& data) {
          L2KV_CUDA_CHECK(cudaMemcpy(in[c], data[static_cast<size_t>(r)].data(),
                                     data[static_cast<size_t>(r)].size(), cudaMemcpyHostToDevice));
        };
        auto enqueue = [&](size_t c) {
          if (calls[c].gather)
            comm.gather_to_first(in[c], out[c], calls[c].bytes(), stream);
          else
            comm.all_reduce_sum(calls[c].type, in[c], calls[c].count, stream);
        };
        auto check = [&](size_t c, const std::vector<std::vector<uint8_t>>& data,
                         const std::string& what) {
          const std::vector<uint8_t> want = expected(calls[c], data, r);
          std::vector<uint8_t> got(want.size());
          L2KV_CUDA_CHECK(cudaMemcpy(got.data(), calls[c].gather ? out[c] : in[c], got.size(),
                                     cudaMemcpyDeviceToHost));
          const bool same =
              calls[c].exact ? got == want : within_ring_rounding(calls[c], data, got);
          if (!same && failure.empty())
            failure = "rank " + std::to_string(r) + ", " + what + " call " + std::to_string(c) +
                      " (" + std::to_string(calls[c].bytes()) + " bytes) differs";
        };
        for (size_t c = 0; c < calls.size(); ++c) upload(c, inputs[c]);
        meet.arrive_and_wait();
        for (size_t c = 0; c < calls.size(); ++c) enqueue(c);
        L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
        for (size_t c = 0; c < calls.size(); ++c) check(c, inputs[c], "eager");
        cudaGraph_t graph = nullptr;
        cudaGraphExec_t exec = nullptr;
        L2KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        enqueue(0);
        enqueue(1);
        L2KV_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
        L2KV_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        meet.arrive_and_wait();
        for (int replay = 0; replay < 3; ++replay) {
          std::vector<std::vector<std::vector<uint8_t>>> fresh;
          for (size_t c = 0; c < 2; ++c) {
            fresh.push_back(random_inputs(calls[c], ranks, 1000 + 10 * replay + c));
            upload(c, fresh[c]);
          }
          meet.arrive_and_wait();
          L2KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
          L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
          for (size_t c = 0; c < 2; ++c)
            check(c, fresh[c], "graph replay " + std::to_string(replay));
        }
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        for (size_t c = 0; c < calls.size(); ++c) cudaFree(in[c]), cudaFree(out[c]);
        cudaStreamDestroy(stream);
      } catch (const std::exception& e) {
        failure = "rank " + std::to_string(r) + ": " + e.what();
        group->abort(failure);
      }
    });
  for (auto& t : threads) t.join();
  for (const std::string& f : failures)
    if (!f.empty()) return f;
  return {};
}

// Sizes from one 16-byte vector to 64 rows of a 4096-wide hidden state, every type, gathers of
// logits-like sizes, and a vector left over past the grid's last full pass; repeated sizes
// reuse both staging halves.
std::vector<Call> call_sequence() {
  return {{CollectiveType::kBFloat16, 4096},
          {CollectiveType::kFloat32, 4 * 1000, true},
          {CollectiveType::kBFloat16, 8},
          {CollectiveType::kFloat16, 64 * 4096},
          {CollectiveType::kFloat32, 12 * 1024 + 4},
          {CollectiveType::kBFloat16, 8 * (ops::kCollectiveBlocks * ops::kCollectiveThreads + 1)},
          {CollectiveType::kFloat32, 16 * 513, true},
          {CollectiveType::kBFloat16, 4096},
          {CollectiveType::kFloat16, 8}};
}

TEST(OneShotCollective, SumsInRankOrderAndGathersOnRanksSharingAGpu) {
  L2KV_SKIP_WITHOUT_GPU();
  for (const int32_t ranks : {2, 3, 4, 8}) {
    SCOPED_TRACE(std::to_string(ranks) + " ranks on cuda:0");
    auto group = std::make_shared<DeviceGroup>(std::vector<int>(ranks, 0), int64_t{1} << 20);
    EXPECT_FALSE(group->uses_nccl());
    EXPECT_EQ(run_calls(group, call_sequence()), "");
  }
}

TEST(OneShotCollective, SumsAndGathersOnePerGpuWithNcclForLargeMessages) {
  L2KV_SKIP_WITHOUT_GPU();
  if (device_count() < 2) GTEST_SKIP() << "one GPU: the one-rank-per-GPU path needs two or more";
  for (int32_t ranks = 2; ranks <= std::min(device_count(), 8); ranks *= 2) {
    std::vector<int> devices;
    for (int d = 0; d < ranks; ++d) devices.push_back(d);
    auto group = std::make_shared<DeviceGroup>(devices);
    EXPECT_TRUE(group->uses_nccl());
    std::vector<Call> calls = call_sequence();
    calls.push_back({CollectiveType::kBFloat16, 2048 * 4096, false, false});  // 16 MiB: NCCL
    calls.push_back({CollectiveType::kFloat32, 1 << 20, false, false});       // 4 MiB: NCCL
    calls.push_back({CollectiveType::kFloat32, 4 << 20, true});               // 4 MiB gather: NCCL
    EXPECT_EQ(run_calls(group, calls), "") << ranks << " GPUs";
  }
}

TEST(OneShotCollective, RefusesWhatNeitherPathCarries) {
  L2KV_SKIP_WITHOUT_GPU();
  auto group = std::make_shared<DeviceGroup>(std::vector<int>{0, 0}, 4096);
  std::string messages[2];
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      DeviceCommunicator comm(group, r);
      if (r != 0) return;
      void* buffer = nullptr;
      L2KV_CUDA_CHECK(cudaMalloc(&buffer, 1 << 16));
      try {  // 6 bytes: not whole vectors
        comm.all_reduce_sum(CollectiveType::kBFloat16, buffer, 3, nullptr);
      } catch (const Error& e) {
        messages[0] = e.what();
      }
      try {  // past the staging
        comm.gather_to_first(buffer, buffer, 8192, nullptr);
      } catch (const Error& e) {
        messages[1] = e.what();
      }
      cudaFree(buffer);
    });
  for (auto& t : threads) t.join();
  EXPECT_NE(messages[0].find("all-reduce of 6 bytes"), std::string::npos) << messages[0];
  EXPECT_NE(messages[1].find("gather of 8192 bytes"), std::string::npos) << messages[1];
  EXPECT_NE(messages[1].find("no NCCL"), std::string::npos) << messages[1];
  EXPECT_THROW(DeviceGroup(std::vector<int>(ops::kCollectiveMaxRanks + 1, 0), 4096), Error);
  EXPECT_THROW(DeviceGroup(std::vector<int>{0, 0}), Error) << "shared GPU without staging";
}

// The all-reduce fused with the residual add and the norm after it, on ranks sharing a GPU, as
// a decode step uses it: three rounds enqueued back to back with no host wait, each a plain
// all-reduce (of the strided kernel) then the fused one on the same residual, so both staging
// halves are reused by both kernels. Checked per round: the plain sums bit for bit, the residual
// exactly the host's (its addend is the rank-ordered float32 sum rounded to the type, one
// float32 add), the norm's output within the dtype's per-row bound, and every rank the same
// bits (the ranks' residual streams must never drift apart). Rows of 4096 and of 264 (33
// vectors: a block's threads cover a row unevenly), 1 to 64 rows, bf16 and fp16.
TEST(OneShotCollective, AllReduceAddRmsNormMatchesTheHostOnEveryRank) {
  L2KV_SKIP_WITHOUT_GPU();
  constexpr float kEps = 1e-5f;
  constexpr int kRounds = 3;
  for (const DType dtype : {DType::kBFloat16, DType::kFloat16})
    for (const int32_t ranks : {2, 4})
      for (const auto& [rows, hidden] :
           {std::pair{1, 4096}, std::pair{7, 264}, std::pair{64, 4096}}) {
        SCOPED_TRACE(std::string(dtype_name(dtype)) + ", " + std::to_string(ranks) + " ranks, " +
                     std::to_string(rows) + " x " + std::to_string(hidden));
        const CollectiveType type =
            dtype == DType::kBFloat16 ? CollectiveType::kBFloat16 : CollectiveType::kFloat16;
        const size_t n = static_cast<size_t>(rows) * hidden;
        std::mt19937_64 rng(static_cast<uint64_t>(rows * 131 + hidden + ranks));
        std::uniform_real_distribution<float> value(-1.f, 1.f);
        auto random_16bit = [&](size_t count, float offset, float scale) {
          std::vector<uint16_t> v(count);
          for (auto& x : v) x = float_to_dtype_bits(dtype, offset + scale * value(rng));
          return v;
        };
        // [round][rank]: the fused call's partials and the plain all-reduce's inputs.
        std::vector<std::vector<std::vector<uint16_t>>> partials(kRounds), plain(kRounds);
        for (int k = 0; k < kRounds; ++k)
          for (int32_t r = 0; r < ranks; ++r) {
            partials[k].push_back(random_16bit(n, 0.f, 1.f));
            plain[k].push_back(random_16bit(n, 0.f, 1.f));
          }
        std::vector<float> residual(n);
        for (auto& x : residual) x = 4.f * value(rng);
        const std::vector<uint16_t> weight = random_16bit(static_cast<size_t>(hidden), 1.f, 0.5f);
        // The host, round by round.
        auto rounded_sum = [&](const std::vector<std::vector<uint16_t>>& in, size_t k) {
          float acc = 0.f;
          for (const auto& x : in) acc += dtype_bits_to_float(dtype, x[k]);
          return float_to_dtype_bits(dtype, acc);
        };
        std::vector<std::vector<float>> want_residual(kRounds), want_out(kRounds);
        std::vector<std::vector<uint16_t>> want_plain(kRounds, std::vector<uint16_t>(n));
        std::vector<float> x = residual;
        for (int k = 0; k < kRounds; ++k) {
          want_out[k].resize(n);
          for (size_t i = 0; i < n; ++i) want_plain[k][i] = rounded_sum(plain[k], i);
          for (int32_t r = 0; r < rows; ++r) {
            double sum_sq = 0;
            for (int32_t i = 0; i < hidden; ++i) {
              const size_t e = static_cast<size_t>(r) * hidden + i;
              x[e] += dtype_bits_to_float(dtype, rounded_sum(partials[k], e));
              sum_sq += double(x[e]) * x[e];
            }
            const double scale = 1.0 / std::sqrt(sum_sq / hidden + kEps);
            for (int32_t i = 0; i < hidden; ++i) {
              const size_t e = static_cast<size_t>(r) * hidden + i;
              want_out[k][e] =
                  static_cast<float>(dtype_bits_to_float(dtype, weight[i]) * (x[e] * scale));
            }
          }
          want_residual[k] = x;
        }
        auto group = std::make_shared<DeviceGroup>(std::vector<int>(ranks, 0), int64_t{1} << 20);
        // [rank][round]: what each rank got.
        std::vector<std::vector<std::vector<float>>> got_residual(static_cast<size_t>(ranks));
        std::vector<std::vector<std::vector<uint16_t>>> got_out(static_cast<size_t>(ranks)),
            got_plain(static_cast<size_t>(ranks));
        std::vector<std::string> errors(static_cast<size_t>(ranks));
        HostBarrier meet(ranks, *group);  // as in run_calls: uploads before any collective
        std::vector<std::thread> threads;
        for (int32_t r = 0; r < ranks; ++r)
          threads.emplace_back([&, r] {
            try {
              DeviceCommunicator comm(group, r);
              cudaStream_t stream = nullptr;
              L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
              float* d_residual = testing::upload(residual);
              uint16_t* d_weight = testing::upload(weight);
              std::vector<uint16_t*> d_partial, d_plain, d_out;
              std::vector<float*> d_snapshot;  // the residual after each round
              for (int k = 0; k < kRounds; ++k) {
                d_partial.push_back(testing::upload(partials[k][static_cast<size_t>(r)]));
                d_plain.push_back(testing::upload(plain[k][static_cast<size_t>(r)]));
                d_out.push_back(testing::upload(std::vector<uint16_t>(n, 0xffff)));  // poison
                d_snapshot.push_back(testing::upload(std::vector<float>(n)));
              }
              meet.arrive_and_wait();
              for (int k = 0; k < kRounds; ++k) {
                comm.all_reduce_sum(type, d_plain[k], static_cast<int64_t>(n), stream);
                if (!comm.all_reduce_add_rmsnorm(type, d_partial[k], d_residual, d_weight, kEps,
                                                 rows, hidden, d_out[k], stream))
                  throw Error("the one-shot path did not take the message");
                L2KV_CUDA_CHECK(cudaMemcpyAsync(d_snapshot[k], d_residual, n * 4,
                                                cudaMemcpyDeviceToDevice, stream));
              }
              L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
              for (int k = 0; k < kRounds; ++k) {
                std::vector<float> res(n);
                std::vector<uint16_t> out(n), sum(n);
                L2KV_CUDA_CHECK(
                    cudaMemcpy(res.data(), d_snapshot[k], n * 4, cudaMemcpyDeviceToHost));
                L2KV_CUDA_CHECK(cudaMemcpy(out.data(), d_out[k], n * 2, cudaMemcpyDeviceToHost));
                L2KV_CUDA_CHECK(cudaMemcpy(sum.data(), d_plain[k], n * 2, cudaMemcpyDeviceToHost));
                got_residual[static_cast<size_t>(r)].push_back(std::move(res));
                got_out[static_cast<size_t>(r)].push_back(std::move(out));
                got_plain[static_cast<size_t>(r)].push_back(std::move(sum));
                cudaFree(d_partial[k]), cudaFree(d_plain[k]), cudaFree(d_out[k]);
                cudaFree(d_snapshot[k]);
              }
              cudaFree(d_residual), cudaFree(d_weight);
              cudaStreamDestroy(stream);
            } catch (const std::exception& e) {
              errors[static_cast<size_t>(r)] = e.what();
              group->abort(e.what());
            }
          });
        for (auto& t : threads) t.join();
        for (const auto& e : errors) ASSERT_EQ(e, "");
        for (int k = 0; k < kRounds; ++k) {
          SCOPED_TRACE("round " + std::to_string(k));
          for (int32_t r = 1; r < ranks; ++r) {
            EXPECT_EQ(got_residual[static_cast<size_t>(r)][k], got_residual[0][k]) << "rank " << r;
            EXPECT_EQ(got_out[static_cast<size_t>(r)][k], got_out[0][k]) << "rank " << r;
          }
          for (int32_t r = 0; r < ranks; ++r)
            EXPECT_EQ(got_plain[static_cast<size_t>(r)][k], want_plain[k]) << "rank " << r;
          EXPECT_EQ(got_residual[0][k], want_residual[k]);
          std::vector<float> out(n);
          for (size_t e = 0; e < n; ++e) out[e] = dtype_bits_to_float(dtype, got_out[0][k][e]);
          const testing::RowErrorStats err = testing::compare_rows(out, want_out[k], hidden);
          EXPECT_EQ(err.non_finite, 0);
          EXPECT_LE(err.worst_row_relative_l2, testing::max_row_relative_l2(dtype))
              << "row " << err.worst_row;
        }
      }
}

// A rank whose peer never comes is released by abort(): its kernel returns and the stream runs
// on (no hang, no device fault); the group keeps the first reason. Rank 1 launches its
// all-reduce behind a host function that holds its stream until after the abort, so rank 0's
// kernel waits alone (and rank 1's, released later, sees the abort too).
TEST(OneShotCollective, AnAbortReleasesARankWaitingForAPeer) {
  L2KV_SKIP_WITHOUT_GPU();
  auto group = std::make_shared<DeviceGroup>(std::vector<int>{0, 0}, 4096);
  static std::atomic<bool> release{false};
  release = false;
  struct ReleaseOnExit {
    ~ReleaseOnExit() { release = true; }  // never leave rank 1's stream held
  } release_on_exit;
  cudaStream_t streams[2] = {};
  void* buffers[2] = {};
  std::unique_ptr<DeviceCommunicator> comms[2];
  std::string errors[2];
  auto rank = [&](int32_t r) {
    try {
      comms[r] = std::make_unique<DeviceCommunicator>(group, r);
      L2KV_CUDA_CHECK(cudaMalloc(&buffers[r], 4096));
      L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&streams[r], cudaStreamNonBlocking));
      if (r == 1)
        L2KV_CUDA_CHECK(cudaLaunchHostFunc(
            streams[r],
            [](void*) {
              while (!release) std::this_thread::sleep_for(std::chrono::milliseconds(1));
            },
            nullptr));
      comms[r]->all_reduce_sum(CollectiveType::kFloat32, buffers[r], 1024, streams[r]);
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  };
  std::thread other(rank, 1);
  rank(0);
  other.join();
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(cudaStreamQuery(streams[0]), cudaErrorNotReady) << "rank 0's kernel waits for rank 1";
  group->abort("rank 1 is gone");
  group->abort("a later reason");
  EXPECT_EQ(cudaStreamSynchronize(streams[0]), cudaSuccess);
  release = true;
  EXPECT_EQ(cudaStreamSynchronize(streams[1]), cudaSuccess);
  EXPECT_EQ(group->abort_reason(), "rank 1 is gone");
  for (int r = 0; r < 2; ++r) cudaStreamDestroy(streams[r]), cudaFree(buffers[r]);
}

// `ranks` ranks on cuda:0 (each rank's all-reduce and gather fit 4 MiB of staging: the
// fixtures' prompts of up to 1100 tokens of 256 wide), graphs captured for up to 16 sequences.
std::unique_ptr<TensorParallelCudaRunner> shared_gpu_runner(const std::string& fixture,
                                                            int32_t ranks, bool graphs) {
  TensorParallelModelSource source;
  source.folder = kFixtures / fixture;
  CudaRunnerOptions options;
  options.cuda_graphs = graphs;
  const std::vector<int> devices(static_cast<size_t>(ranks), 0);
  return std::make_unique<TensorParallelCudaRunner>(
      devices, source, options, nullptr, std::make_shared<DeviceGroup>(devices, int64_t{4} << 20));
}

EngineConfig engine_config() {
  EngineConfig c;
  c.max_num_seqs = 16;
  c.max_num_batched_tokens = 2048;
  c.num_kv_blocks = 129;
  return c;
}

struct TpVariant {
  const char* fixture;
  int32_t ranks;
  bool graphs;
};

class TensorParallelCudaEngine : public ::testing::TestWithParam<TpVariant> {};

// The fixture's transformers cases through an engine on `runner`: 32 greedy tokens each, judged
// as CudaEngine.GreedyMatchesTransformers judges the whole model; no KV block leaked.
void expect_engine_greedy(const std::string& fixture, std::unique_ptr<ModelRunner> runner,
                          const std::string& label) {
  const auto cases = testing::greedy_cases(kFixtures / fixture);
  Engine engine(std::move(runner), nullptr, engine_config());
  std::vector<std::vector<SampledToken>> logprobs(cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    GenerationRequest r;
    r.prompt = cases[i].prompt;
    r.params.temperature = 0;
    r.params.max_tokens = 32;
    r.params.ignore_eos = true;
    r.params.logprobs = 5;
    auto* into = &logprobs[i];
    r.on_output = [into](const RequestOutput& o) {
      into->insert(into->end(), o.new_logprobs.begin(), o.new_logprobs.end());
      EXPECT_NE(o.finish_reason, FinishReason::kError) << o.error;
    };
    engine.add_request(std::move(r));
  }
  engine.run_until_idle();
  EXPECT_EQ(engine.stats().kv_blocks_free, engine.stats().kv_blocks_total) << "KV blocks leaked";
  for (size_t i = 0; i < cases.size(); ++i)
    testing::expect_greedy_near_transformers(logprobs[i], cases[i], label);
}

TEST_P(TensorParallelCudaEngine, GreedyMatchesTransformers) {
  L2KV_SKIP_WITHOUT_GPU();
  const TpVariant v = GetParam();
  expect_engine_greedy(v.fixture, shared_gpu_runner(v.fixture, v.ranks, v.graphs),
                       std::string(v.fixture) + " over " + std::to_string(v.ranks) +
                           " ranks sharing cuda:0, graphs " + std::to_string(v.graphs));
}

// One rank per GPU (NCCL for the prefill's messages above the one-shot size: the 1100-token
// prompt's 563 KB), where the machine has the GPUs.
TEST(TensorParallelCudaEngineSingle, GreedyMatchesTransformersOneRankPerGpu) {
  L2KV_SKIP_WITHOUT_GPU();
  if (device_count() < 2) GTEST_SKIP() << "one GPU: the one-rank-per-GPU path needs two or more";
  for (int32_t ranks = 2; ranks <= std::min(device_count(), 4); ranks *= 2)
    for (const char* fixture : {"llama3-gqa", "qwen3-qknorm"}) {
      std::vector<int> devices;
      for (int d = 0; d < ranks; ++d) devices.push_back(d);
      TensorParallelModelSource source;
      source.folder = kFixtures / fixture;
      expect_engine_greedy(
          fixture, std::make_unique<TensorParallelCudaRunner>(devices, source, CudaRunnerOptions{}),
          std::string(fixture) + " over " + std::to_string(ranks) + " GPUs");
    }
}

INSTANTIATE_TEST_SUITE_P(
    SharedGpu, TensorParallelCudaEngine,
    ::testing::Values(TpVariant{"llama3-gqa", 2, true}, TpVariant{"llama3-gqa", 4, true},
                      TpVariant{"llama3-gqa", 2, false}, TpVariant{"llama2-mha", 4, true},
                      TpVariant{"qwen2-tied", 2, true}, TpVariant{"llama3-hd128", 2, true},
                      TpVariant{"qwen3-qknorm", 4, true}),
    [](const auto& param_info) {
      const TpVariant& v = param_info.param;
      std::string name = std::string(v.fixture) + "_" + std::to_string(v.ranks) + "_ranks" +
                         (v.graphs ? "" : "_eager");
      std::replace(name.begin(), name.end(), '-', '_');
      return name;
    });

TEST(TensorParallelCudaEngineSingle, ASplitTheRanksRefuseFailsAtLoadWithItsReason) {
  L2KV_SKIP_WITHOUT_GPU();
  try {
    shared_gpu_runner("gemma3-sliding", 2, true);
    FAIL() << "Gemma 3 loaded under tensor parallelism";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Gemma3ForCausalLM"), std::string::npos) << e.what();
  }
  try {
    shared_gpu_runner("llama3-gqa", 3, true);  // 4 heads over 3 ranks
    FAIL() << "4 attention heads split over 3 ranks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not divide evenly"), std::string::npos) << e.what();
  }
}

// A step the runners refuse (a token outside the vocabulary) is refused on every rank before
// any waits for another: the runner stays usable. After an abort (as a failed rank's thread
// makes) every step fails with the first reason, and device_fault() says it.
TEST(TensorParallelCudaEngineSingle, ARefusedStepLeavesTheRanksUsableAnAbortEndsThem) {
  L2KV_SKIP_WITHOUT_GPU();
  const std::vector<int> devices = {0, 0};
  auto group = std::make_shared<DeviceGroup>(devices, int64_t{1} << 20);
  TensorParallelModelSource source;
  source.folder = kFixtures / "llama3-gqa";
  TensorParallelCudaRunner runner(devices, source, CudaRunnerOptions{}, nullptr, group);
  std::shared_ptr<CudaModel> rank0 = runner.rank_model(0);
  EXPECT_TRUE(rank0->tensor_parallel());
  EXPECT_EQ(rank0->config().num_q_heads, 2);
  EXPECT_EQ(rank0->whole_config().num_q_heads, 4);
  EXPECT_EQ(runner.config().num_q_heads, 4);
  const KvCacheSizing sizing = runner.prepare(16, 256, 4, 512, 0.5);
  EXPECT_GT(sizing.bytes_per_block, 0);
  runner.allocate_kv_cache(64);
  const std::vector<int32_t> table = {3, 7};
  const std::vector<int32_t> good = {1, 2, 3, 4, 5}, bad = {1, 2, 100000};
  SamplingParams params;
  params.temperature = 0;
  auto step_of = [&](const std::vector<int32_t>& tokens) {
    StepInput step;
    StepSequence s;
    s.tokens = tokens;
    s.block_tables = {table};
    s.sample = true;
    s.sampling.params = &params;
    step.sequences.push_back(s);
    return step;
  };
  EXPECT_THROW(runner.execute(step_of(bad)), Error);
  EXPECT_EQ(runner.device_fault(), "");
  EXPECT_EQ(runner.execute(step_of(good)).size(), 1u);
  group->abort("rank 1: injected failure");
  try {
    runner.execute(step_of(good));
    FAIL() << "a step ran on an aborted group";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("injected failure"), std::string::npos) << e.what();
  }
  EXPECT_NE(runner.device_fault().find("injected failure"), std::string::npos);
}

// Rank 0's logits of a tensor-parallel runner against the whole model's on one GPU, step by
// step (a 10-token prompt, then three decode steps of the whole model's greedy tokens, as CUDA
// graphs), on a tiny Qwen3 (q/k norms, tied embeddings) whose 1030-token vocabulary splits
// 515 / 515 over 2 ranks and 257 / 258 / 257 / 258 over 4, so each rank's logits are gathered
// with a stride wider than its part. 16-bit and fp8 weights. Rank 0's logits are poisoned
// before every step: a column the gather misses stays NaN. The ranks round their partial sums to
// bf16 before the all-reduce where the whole model rounds the sum once: a few bf16 roundings
// apart; a rank missing from a sum or a wrong slice is off by O(1). Measured on an H200
// (2026-12-05, bench/results/2026-12-05-h200-tp-shared-gpu/): 6.5e-3 to 1.01e-2 over the 16
// steps (bf16 and fp8, 2 and 4 ranks); the bound is 1.5x the worst. This is the noise floor of
// the comparison, so a 1 % logit scale error is within it: the greedy and prompt-logprob tests
// against transformers and the CPU runner are the finer checks of the sharded model.
constexpr double kShardedLogitsMaxRowRelativeL2 = 1.5e-2;

// Each step's logits on rank 0 (`rank0`: the runner itself for a whole model): `steps[0]` is the
// prompt; later steps feed the token in `steps` where there is one, else the greedy token of
// the step before (appended to `steps`), up to `count` steps.
std::vector<std::vector<float>> step_logits(ModelRunner& runner, CudaRunner& rank0,
                                            std::vector<std::vector<int32_t>>& steps,
                                            size_t count) {
  const int64_t vocab = runner.config().vocab_size;
  runner.prepare(16, 256, 4, 512, 0.3);
  runner.allocate_kv_cache(64);
  const std::vector<int32_t> table = {5, 9};
  SamplingParams params;
  params.temperature = 0;
  std::vector<std::vector<float>> out;
  int32_t position = 0;
  for (size_t i = 0; i < count; ++i) {
    StepInput step;
    StepSequence s;
    s.tokens = steps[i];
    s.start_position = position;
    s.block_tables = {table};
    s.sample = true;
    s.sampling.params = &params;
    step.sequences.push_back(s);
    float* logits = const_cast<float*>(rank0.step_state().logits());
    L2KV_CUDA_CHECK(cudaSetDevice(0));
    L2KV_CUDA_CHECK(cudaMemset(logits, 0xff, static_cast<size_t>(vocab) * sizeof(float)));
    L2KV_CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<SampledToken> sampled = runner.execute(step);
    std::vector<float> row(static_cast<size_t>(vocab));
    L2KV_CUDA_CHECK(cudaMemcpy(row.data(), rank0.step_state().logits(), row.size() * sizeof(float),
                               cudaMemcpyDeviceToHost));
    out.push_back(std::move(row));
    position += static_cast<int32_t>(steps[i].size());
    if (i + 1 < count && steps.size() == i + 1) steps.push_back({sampled.at(0).token});
  }
  return out;
}

TEST(TensorParallelCudaEngineSingle, ShardedLogitsMatchTheWholeModelWithAnUnevenVocabulary) {
  L2KV_SKIP_WITHOUT_GPU();
  const testing::TinyQwen3 m = testing::tiny_qwen3(7, 256, 4, 2, 64, 2, 1030, 512);
  const fs::path dir = fs::path(::testing::TempDir()) / "l2kv_tp_cuda_tiny";
  for (const bool fp8 : {false, true}) {
    SCOPED_TRACE(fp8 ? "fp8 weights" : "16-bit weights");
    if (fp8) {
      const testing::Fp8Twins t = testing::fp8_twins(m.config, m.tensors, true);
      testing::write_tiny_checkpoint(dir, t.config, t.quantized);
    } else {
      testing::write_tiny_checkpoint(dir, m.config, m.tensors);
    }
    std::vector<std::vector<int32_t>> steps = {{1, 500, 9, 1029, 0, 3, 3, 712, 7, 40}};
    std::vector<std::vector<float>> want;
    {
      L2KV_CUDA_CHECK(cudaSetDevice(0));
      // Nine kernels per layer, as the ranks run it: only the partial sums' rounding differs.
      CudaRunnerOptions nine;
      nine.fused_layer_max_rows = 0;
      CudaRunner whole(std::make_shared<CudaModel>(dir), nine);
      want = step_logits(whole, whole, steps, 4);  // its greedy tokens fill steps[1..3]
    }
    ASSERT_EQ(steps.size(), 4u);
    for (const int32_t ranks : {2, 4}) {
      SCOPED_TRACE(std::to_string(ranks) + " ranks");
      const std::vector<int> devices(static_cast<size_t>(ranks), 0);
      TensorParallelModelSource source;
      source.folder = dir;
      TensorParallelCudaRunner runner(devices, source, CudaRunnerOptions{}, nullptr,
                                      std::make_shared<DeviceGroup>(devices, int64_t{1} << 20));
      const auto got = step_logits(runner, runner.rank_runner(0), steps, steps.size());
      for (size_t s = 0; s < steps.size(); ++s) {
        double diff = 0, norm = 0;
        int64_t non_finite = 0;
        for (size_t i = 0; i < want[s].size(); ++i) {
          if (!std::isfinite(got[s][i])) ++non_finite;
          diff += (got[s][i] - want[s][i]) * double(got[s][i] - want[s][i]);
          norm += want[s][i] * double(want[s][i]);
        }
        const double relative = std::sqrt(diff / norm);
        std::printf("[row-error] sharded logits %s, %d ranks, step %zu: rel_l2=%.2e\n",
                    fp8 ? "fp8" : "bf16", ranks, s, relative);
        EXPECT_EQ(non_finite, 0) << "step " << s << ": columns the gather left unwritten";
        EXPECT_LE(relative, kShardedLogitsMaxRowRelativeL2) << "step " << s;
      }
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace l2kv
