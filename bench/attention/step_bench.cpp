// l2kv_bench_step: the attention half of a decoder layer in its unfused form, QKV projection ->
// RoPE + KV write -> split decode attention, for several layers (each with its own weights and
// KV pools, like a model's) in one CUDA graph, with each split prefetch policy. A decode step
// runs this chain above 16 rows, and at 1-16 rows only where QKV is not on the GEMV (more than
// 8192 outputs) or the model has q/k norms; otherwise the QKV GEMV applies RoPE and writes the KV
// itself (`l2kv bench --profile` times that chain), so the points at 1 and 16 rows here measure
// the unfused chain, not the engine's.
// It measures what programmatic dependent launch (+pdl) saves per layer: the attention kernel's
// launch and prologue overlapping the RoPE kernel, and its first KV tiles fetched into L2
// before the RoPE kernel's writes are visible. With --mlp each layer also runs its o_proj,
// gate_up and down projections, and the policy suffix "+next_layer_l2" (this benchmark's
// experiment) prefetches layer L+1's KV into L2 on a second stream during layer L's MLP.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench_kernels.h"
#include "bench_timing.h"
#include "decode_params.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_array.h"
#include "l2kv/core/device_info.h"
#include "l2kv/kernels/attention/split_decode.h"
#include "l2kv/kernels/model/gemm.h"
#include "l2kv/kernels/model/model_ops.h"
#include "l2kv/kernels/random_fill.h"

namespace l2kv::bench {
namespace {

struct Options {
  std::vector<int32_t> batches{1, 16, 64};
  std::vector<int32_t> contexts{1024, 4608};
  std::vector<std::string> policies{"off", "off+pdl", "on:1", "on:1+pdl"};
  int32_t layers = 8;
  int32_t hidden = 4096;  // Llama-3-8B
  int32_t q_heads = 32;
  int32_t kv_heads = 8;
  int32_t head_dim = 128;
  int32_t block_size = 32;  // the engine's default (EngineConfig::block_size)
  int32_t intermediate = 14336;
  bool mlp = false;
  int reps = 30;
  std::string json_path;
};

// One layer's state: QKV weights, KV pools, and with --mlp the o_proj, gate_up, down weights.
struct Layer {
  DeviceArray<uint16_t> qkv_weight;
  DeviceArray<uint16_t> k_pool, v_pool;
  DeviceArray<uint16_t> o_weight, gate_up_weight, down_weight;
  Layer(size_t weight_elems, size_t pool_elems, size_t o_elems, size_t gate_up_elems,
        size_t down_elems)
      : qkv_weight(weight_elems),
        k_pool(pool_elems),
        v_pool(pool_elems),
        o_weight(o_elems),
        gate_up_weight(gate_up_elems),
        down_weight(down_elems) {}
};

constexpr const char* kNextLayerSuffix = "+next_layer_l2";

nlohmann::json run_point(const Options& o, const DeviceInfo& info, int32_t batch, int32_t context,
                         cudaStream_t stream) {
  const int32_t q_dim = o.q_heads * o.head_dim, kv_dim = o.kv_heads * o.head_dim;
  const int32_t qkv_out = q_dim + 2 * kv_dim;
  const int32_t seq_len = context + 1;  // the cached context plus this step's token
  const int32_t blocks_per_seq = (seq_len + o.block_size - 1) / o.block_size;
  const int32_t num_blocks = batch * blocks_per_seq;
  const size_t pool_elems = static_cast<size_t>(num_blocks) * o.block_size * kv_dim;

  const size_t o_elems = o.mlp ? static_cast<size_t>(o.hidden) * q_dim : 0;
  const size_t gate_up_elems = o.mlp ? size_t{2} * o.intermediate * o.hidden : 0;
  const size_t down_elems = o.mlp ? static_cast<size_t>(o.hidden) * o.intermediate : 0;
  std::vector<std::unique_ptr<Layer>> layers;
  for (int32_t l = 0; l < o.layers; ++l) {
    layers.push_back(std::make_unique<Layer>(static_cast<size_t>(qkv_out) * o.hidden, pool_elems,
                                             o_elems, gate_up_elems, down_elems));
    for (auto* w : {&layers[l]->o_weight, &layers[l]->gate_up_weight, &layers[l]->down_weight})
      if (w->size() > 1)
        fill_random(w->ptr, static_cast<int64_t>(w->size()), DType::kBFloat16, 0.02f, 50 + l,
                    stream);
    fill_random(layers[l]->qkv_weight.ptr, static_cast<int64_t>(qkv_out) * o.hidden,
                DType::kBFloat16, 0.02f, 10 + l, stream);
    fill_random(layers[l]->k_pool.ptr, static_cast<int64_t>(pool_elems), DType::kBFloat16, 1.f,
                100 + l, stream);
    fill_random(layers[l]->v_pool.ptr, static_cast<int64_t>(pool_elems), DType::kBFloat16, 1.f,
                200 + l, stream);
  }
  // Shuffled block tables; the new token of each sequence goes to position `context`.
  std::mt19937 rng(static_cast<uint32_t>(batch * 7919 + context));
  std::vector<int32_t> physical(num_blocks);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  std::vector<int32_t> positions(batch, context), slots(batch), lens(batch, seq_len);
  for (int32_t s = 0; s < batch; ++s)
    slots[s] = physical[s * blocks_per_seq + context / o.block_size] * o.block_size +
               context % o.block_size;
  std::vector<float> inv_freq(o.head_dim / 2);
  for (int32_t i = 0; i < o.head_dim / 2; ++i)
    inv_freq[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / o.head_dim));

  DeviceArray<int32_t> table_d(physical.size()), positions_d(batch), slots_d(batch), lens_d(batch);
  DeviceArray<float> inv_freq_d(inv_freq.size());
  DeviceArray<uint16_t> x(static_cast<size_t>(batch) * o.hidden);
  DeviceArray<uint16_t> qkv(static_cast<size_t>(batch) * qkv_out);
  DeviceArray<uint16_t> q(static_cast<size_t>(batch) * q_dim),
      out(static_cast<size_t>(batch) * q_dim);
  DeviceArray<uint16_t> proj(static_cast<size_t>(batch) * o.hidden);
  DeviceArray<uint16_t> gate_up(o.mlp ? size_t{2} * batch * o.intermediate : 1);
  DeviceArray<uint16_t> act(o.mlp ? static_cast<size_t>(batch) * o.intermediate : 1);
  auto upload = [&](void* dst, const void* src, size_t bytes) {
    L2KV_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream));
  };
  upload(table_d.ptr, physical.data(), physical.size() * sizeof(int32_t));
  upload(positions_d.ptr, positions.data(), batch * sizeof(int32_t));
  upload(slots_d.ptr, slots.data(), batch * sizeof(int32_t));
  upload(lens_d.ptr, lens.data(), batch * sizeof(int32_t));
  upload(inv_freq_d.ptr, inv_freq.data(), inv_freq.size() * sizeof(float));
  fill_random(x.ptr, static_cast<int64_t>(batch) * o.hidden, DType::kBFloat16, 1.f, 7, stream);
  if (o.mlp)
    fill_random(act.ptr, static_cast<int64_t>(act.size()), DType::kBFloat16, 1.f, 8, stream);
  cudaStream_t side = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr;
  L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));

  const PagedKvCache kv = {layers[0]->k_pool.ptr,
                           layers[0]->v_pool.ptr,
                           table_d.ptr,
                           lens_d.ptr,
                           num_blocks,
                           o.block_size,
                           o.kv_heads,
                           o.head_dim,
                           batch,
                           blocks_per_seq,
                           KvLayout::kHND,
                           DType::kBFloat16};
  const DecodeAttentionParams params = decode_params(q.ptr, out.ptr, o.q_heads, seq_len, kv);

  // As the engine runs it: graph mode, one plan for all layers of the step.
  SplitDecode split;
  split.reserve_for_graphs(batch, params);
  split.plan(params, lens, stream);
  Gemm gemm;
  auto layer_kv = [&](const Layer& layer) {
    PagedKvCache kv_of_layer = params.kv;
    kv_of_layer.k_pool = layer.k_pool.ptr;
    kv_of_layer.v_pool = layer.v_pool.ptr;
    return kv_of_layer;
  };
  auto enqueue_layers = [&](const PrefetchPolicy& policy, bool next_layer_l2) {
    for (size_t l = 0; l < layers.size(); ++l) {
      const Layer& layer = *layers[l];
      DecodeAttentionParams p = params;
      p.kv = layer_kv(layer);
      gemm.linear(DType::kBFloat16, x.ptr, layer.qkv_weight.ptr, qkv.ptr, batch, o.hidden, qkv_out,
                  stream);
      ops::rope_and_cache(qkv.ptr, nullptr, positions_d.ptr, slots_d.ptr, inv_freq_d.ptr, batch,
                          o.q_heads, p.kv, q.ptr, stream, policy.pdl);
      split.run(p, policy, stream);
      if (!o.mlp) continue;
      gemm.linear(DType::kBFloat16, out.ptr, layer.o_weight.ptr, proj.ptr, batch, q_dim, o.hidden,
                  stream);
      const bool prefetch_next = next_layer_l2 && l + 1 < layers.size();
      if (prefetch_next) {  // layer l+1's older KV into L2 while this layer's MLP streams
        L2KV_CUDA_CHECK(cudaEventRecord(fork, stream));
        L2KV_CUDA_CHECK(cudaStreamWaitEvent(side, fork, 0));
        launch_prefetch_kv_l2(layer_kv(*layers[l + 1]), side);
        L2KV_CUDA_CHECK(cudaEventRecord(join, side));
      }
      gemm.linear(DType::kBFloat16, x.ptr, layer.gate_up_weight.ptr, gate_up.ptr, batch, o.hidden,
                  2 * o.intermediate, stream);
      gemm.linear(DType::kBFloat16, act.ptr, layer.down_weight.ptr, proj.ptr, batch, o.intermediate,
                  o.hidden, stream);
      if (prefetch_next) L2KV_CUDA_CHECK(cudaStreamWaitEvent(stream, join, 0));
    }
  };
  // Cold L2 before each replay, as after a step's LM head: write then read 256 MiB.
  DeviceArray<uint8_t> flush(size_t{256} << 20);
  DeviceArray<uint32_t> sink(static_cast<size_t>(info.sm_count) * 8 * 256);

  nlohmann::json point = {{"batch", batch},
                          {"context", context},
                          {"layers", o.layers},
                          {"kv_mib_per_layer", 2.0 * pool_elems * 2 / (1 << 20)}};
  for (const std::string& name : o.policies) {
    std::string policy_text = name;
    const size_t suffix = policy_text.find(kNextLayerSuffix);
    const bool next_layer_l2 = suffix != std::string::npos;
    if (next_layer_l2) policy_text.erase(suffix, std::string(kNextLayerSuffix).size());
    const PrefetchPolicy policy = parse_prefetch_policy(policy_text);
    enqueue_layers(policy, next_layer_l2);  // eager once: GEMM plans and kernel attributes
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    L2KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    enqueue_layers(policy, next_layer_l2);
    L2KV_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    L2KV_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    std::vector<double> us;
    cudaEvent_t start, stop;
    L2KV_CUDA_CHECK(cudaEventCreate(&start));
    L2KV_CUDA_CHECK(cudaEventCreate(&stop));
    for (int r = 0; r < o.reps + 2; ++r) {
      L2KV_CUDA_CHECK(cudaMemsetAsync(flush.ptr, r & 0xff, flush.size(), stream));
      launch_streaming_read(flush.ptr, static_cast<int64_t>(flush.size()), sink.ptr, info.sm_count,
                            stream);
      L2KV_CUDA_CHECK(cudaEventRecord(start, stream));
      L2KV_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      L2KV_CUDA_CHECK(cudaEventRecord(stop, stream));
      L2KV_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0;
      L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (r >= 2) us.push_back(ms * 1e3);  // the first replays upload the graph
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    const double per_layer = median(us) / o.layers;
    point["us_per_layer"][name] = per_layer;
    point["mlp"] = o.mlp;
    std::printf("B=%-3d ctx=%-5d %-12s %8.2f us/layer\n", batch, context, name.c_str(), per_layer);
  }
  cudaEventDestroy(fork);
  cudaEventDestroy(join);
  cudaStreamDestroy(side);
  return point;
}

}  // namespace
}  // namespace l2kv::bench

int main(int argc, char** argv) {
  using namespace l2kv;
  using namespace l2kv::bench;
  Options o;
  CLI::App app{
      "l2kv_bench_step: QKV projection -> RoPE + KV write -> split decode attention for several "
      "layers in one CUDA graph (cold L2 before each replay), per split prefetch policy; "
      "reports microseconds per layer"};
  app.add_option("--batches", o.batches, "Batch sizes (sequences)")->capture_default_str();
  app.add_option("--contexts", o.contexts, "Cached tokens per sequence")->capture_default_str();
  app.add_option("--policies", o.policies,
                 "Split prefetch policies (see --kv-prefetch of l2kv; +pdl = programmatic "
                 "dependent launch with prefetch before the grid dependency wait)")
      ->capture_default_str();
  app.add_option("--layers", o.layers, "Layers per graph, each with its own weights and KV")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_flag("--mlp", o.mlp,
               "Also run each layer's o_proj, gate_up and down projections (Llama-3-8B sizes); "
               "enables the policy suffix +next_layer_l2 (prefetch layer L+1's KV into L2 on a "
               "second stream during layer L's MLP)");
  app.add_option("--block-size", o.block_size, "KV block (page) size in tokens")
      ->check(CLI::IsMember({16, 32, 64}))
      ->capture_default_str();
  app.add_option("--reps", o.reps, "Timed graph replays per policy (median)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--json", o.json_path, "Write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  try {
    for (std::string p : o.policies) {  // fail before any GPU work
      const size_t suffix = p.find(kNextLayerSuffix);
      if (suffix != std::string::npos) {
        if (!o.mlp) throw Error(p + ": " + kNextLayerSuffix + " needs --mlp");
        p.erase(suffix, std::string(kNextLayerSuffix).size());
      }
      parse_prefetch_policy(p);
    }
    int device = 0;
    L2KV_CUDA_CHECK(cudaGetDevice(&device));
    const DeviceInfo info = query_device_info(device);
    cudaStream_t stream = nullptr;
    L2KV_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    std::string command_line;
    for (int i = 0; i < argc; ++i) command_line += (i ? " " : "") + std::string(argv[i]);
    std::printf("%s, %d SMs; llama3-8b %s, %d layers, bf16, HND, block %d\n", info.name.c_str(),
                info.sm_count, o.mlp ? "layers" : "attention chain", o.layers, o.block_size);
    nlohmann::json results = {{"device", info.name},
                              {"command", command_line},
                              {"date", std::time(nullptr)},
                              {"points", nlohmann::json::array()}};
    for (int32_t batch : o.batches)
      for (int32_t context : o.contexts)
        results["points"].push_back(run_point(o, info, batch, context, stream));
    if (!o.json_path.empty()) std::ofstream(o.json_path) << results.dump(2) << "\n";
    cudaStreamDestroy(stream);
  } catch (const std::exception& e) {
    std::cerr << "l2kv_bench_step: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
