#include "l2kv/engine/cuda_step_state.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "l2kv/core/ceil_div.h"
#include "l2kv/core/cuda_check.h"
#include "l2kv/core/device_array.h"
#include "l2kv/core/error.h"
#include "l2kv/kernels/model/gemv.h"

namespace l2kv {

// The step metadata: one int32 arena, [seq_lens S | last_rows S | ids T | positions T |
// slots G x T | block tables G x S x stride] for G KV cache groups, mirrored in pinned host
// memory so a step uploads it with two copies. A step of B sequences packs its tables as
// [G][B][stride] at the front of their region, so the upload grows with B and not with S
// (a graph of B rows reads the same addresses at every replay), and of each table row only the
// entries in use go up.
struct CudaStepState::StepMetadata {
  DeviceArray<int32_t> meta;
  int32_t* host_meta = nullptr;
  cudaEvent_t uploaded = nullptr;  // the last upload has left host_meta
  int64_t seq_lens = 0, last_rows = 0, ids = 0, positions = 0, slots = 0, block_table = 0;
  int32_t stride = 0;  // block-table entries per sequence
  ~StepMetadata() {
    if (host_meta) cudaFreeHost(host_meta);
    if (uploaded) cudaEventDestroy(uploaded);
  }
};

CudaStepState::CudaStepState(std::shared_ptr<CudaModel> model) : model_(std::move(model)) {
  if (!model_) throw Error("CUDA backend: a step state needs a model");
  groups_ = single_kv_cache_group(config());
  int device = 0;
  L2KV_CUDA_CHECK(cudaGetDevice(&device));
  if (device != model_->device())
    throw Error("CUDA backend: a step state is made on its model's device (cuda:" +
                std::to_string(model_->device()) + "), not cuda:" + std::to_string(device));
  L2KV_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&kv_scales_),
                             static_cast<size_t>(2 * config().num_layers) * sizeof(float)));
  set_calculate_kv_scales(calculate_kv_scales_);
  fused_layer_max_rows_ = model_->default_fused_layer_max_rows();
}

CudaStepState::~CudaStepState() {
  drop_graphs();
  for (void* p : k_pools_) cudaFree(p);
  for (void* p : v_pools_) cudaFree(p);
  if (kv_scales_) cudaFree(kv_scales_);
  destroy_op_events();
  if (total_events_.start) cudaEventDestroy(total_events_.start);
  if (total_events_.stop) cudaEventDestroy(total_events_.stop);
}

void CudaStepState::destroy_op_events() {
  for (auto& e : op_events_.gemm) cudaEventDestroy(e.start), cudaEventDestroy(e.stop);
  for (auto& e : op_events_.attention) cudaEventDestroy(e.start), cudaEventDestroy(e.stop);
  op_events_.gemm.clear();
  op_events_.attention.clear();
}

void CudaStepState::reset_kv_scales() {
  const std::vector<float> host = model_->checkpoint_kv_scales();
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());  // no step in flight reads them while they change
  L2KV_CUDA_CHECK(
      cudaMemcpy(kv_scales_, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice));
}

void CudaStepState::set_calculate_kv_scales(bool on) {
  calculate_kv_scales_ = on;
  reset_kv_scales();
  kv_scales_pending_ = on && model_->missing_checkpoint_kv_scales();
}

std::vector<float> CudaStepState::kv_scales() const {
  std::vector<float> host(static_cast<size_t>(2 * config().num_layers));
  L2KV_CUDA_CHECK(cudaDeviceSynchronize());
  L2KV_CUDA_CHECK(
      cudaMemcpy(host.data(), kv_scales_, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

void CudaStepState::drop_graphs() {
  for (auto& [size, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

void CudaStepState::allocate_workspace(const WorkspaceLimits& limits) {
  const ModelConfig& c = config();
  if (limits.max_tokens <= 0 || limits.max_seqs <= 0 || limits.max_model_len <= 0)
    throw Error("CUDA backend: workspace limits must be positive");
  drop_graphs();
  limits_ = limits;
  if (limits_.max_logit_rows <= 0) limits_.max_logit_rows = limits_.max_seqs;
  const auto T = static_cast<size_t>(row_capacity());
  const size_t S = static_cast<size_t>(limits_.max_seqs);
  // Free the old buffers before taking new ones.
  activations_.reset();
  meta_.reset();
  activations_ = model_->allocate_activations(static_cast<int32_t>(T), limits_.max_logit_rows);
  auto ws = std::make_unique<StepMetadata>();
  ws->stride = ceil_div(limits_.max_model_len, 16);  // enough for any supported block size
  ws->seq_lens = 0;
  ws->last_rows = ws->seq_lens + static_cast<int64_t>(S);
  ws->ids = ws->last_rows +
            static_cast<int64_t>(std::max(S, static_cast<size_t>(limits_.max_logit_rows)));
  ws->positions = ws->ids + static_cast<int64_t>(T);
  ws->slots = ws->positions + static_cast<int64_t>(T);
  const auto G = static_cast<size_t>(groups_.num_groups());
  ws->block_table = ws->slots + static_cast<int64_t>(G * T);
  const size_t meta = static_cast<size_t>(ws->block_table) + G * S * ws->stride;
  ws->meta = DeviceArray<int32_t>(meta);
  // Table entries past a row's used ones are never uploaded (prepare): block 0 until written.
  L2KV_CUDA_CHECK(cudaMemset(ws->meta.ptr, 0, meta * sizeof(int32_t)));
  L2KV_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&ws->host_meta), meta * 4));
  L2KV_CUDA_CHECK(cudaEventCreateWithFlags(&ws->uploaded, cudaEventDisableTiming));
  meta_ = std::move(ws);
  // Attention work lists and partials, sized here for the largest step: never grown in one.
  attention_.set_sliding_windows(c.has_sliding_layers());
  attention_.reserve_prefill(static_cast<int32_t>(T), limits_.max_seqs,
                             static_cast<int32_t>(c.num_kv_heads),
                             static_cast<int32_t>(c.num_q_heads));
  reserve_attention();
}

int32_t CudaStepState::row_capacity() const {
  return std::max(limits_.max_tokens, limits_.max_seqs);
}

int32_t CudaStepState::table_stride() const {
  return ceil_div(limits_.max_model_len, block_size_);
}

void CudaStepState::reserve_attention() {
  if (activations_)
    attention_.reserve_decode(limits_.max_seqs, limits_.max_model_len, decode_params(),
                              num_blocks_ > 0);
}

void CudaStepState::set_kv_storage(KvStorage storage) {
  if (num_blocks_ > 0)
    throw Error("CUDA backend: the KV cache dtype is set before the KV pool is allocated");
  kv_storage_ = storage;
}

void CudaStepState::set_kv_cache_groups(KvCacheGroups groups) {
  if (num_blocks_ > 0)
    throw Error("CUDA backend: the KV cache groups are set before the KV pool is allocated");
  if (groups.num_layers() != config().num_layers || groups.num_groups() < 1 || groups.num_slots < 1)
    throw Error("CUDA backend: KV cache groups for " + std::to_string(groups.num_layers()) +
                " layers, the model has " + std::to_string(config().num_layers));
  groups_ = std::move(groups);
  if (meta_) allocate_workspace(limits_);  // the metadata holds a table per group
}

int64_t CudaStepState::kv_block_bytes(int32_t block_size) const {
  return model_->kv_block_bytes(kv_storage_, block_size) / config().num_layers * groups_.num_slots;
}

void CudaStepState::allocate_kv_cache(int32_t num_blocks, int32_t block_size) {
  if (num_blocks < 2) throw Error("CUDA backend: the KV pool needs at least 2 blocks");
  if (std::find(std::begin(kSupportedBlockSizes), std::end(kSupportedBlockSizes), block_size) ==
      std::end(kSupportedBlockSizes))
    throw Error("CUDA backend: block size " + std::to_string(block_size) +
                " is not supported (16, 32, 64 are)");
  release_kv_cache();
  num_blocks_ = num_blocks;
  block_size_ = block_size;
  const size_t pool_bytes = static_cast<size_t>(kv_block_bytes(block_size) / 2 / groups_.num_slots);
  for (int32_t slot = 0; slot < groups_.num_slots; ++slot) {
    void *k = nullptr, *v = nullptr;
    L2KV_CUDA_CHECK(cudaMalloc(&k, pool_bytes * num_blocks));
    k_pools_.push_back(k);
    L2KV_CUDA_CHECK(cudaMalloc(&v, pool_bytes * num_blocks));
    v_pools_.push_back(v);
    // Finite contents everywhere: pad rows attend to block 0 without writing it (only the
    // runner's warm-up forward at start writes there, finite K/V of token 0).
    L2KV_CUDA_CHECK(cudaMemset(k, 0, pool_bytes * num_blocks));
    L2KV_CUDA_CHECK(cudaMemset(v, 0, pool_bytes * num_blocks));
  }
  reserve_attention();
}

void CudaStepState::release_kv_cache() {
  drop_graphs();
  for (void* p : k_pools_) L2KV_CUDA_CHECK(cudaFree(p));
  for (void* p : v_pools_) L2KV_CUDA_CHECK(cudaFree(p));
  k_pools_.clear();
  v_pools_.clear();
  num_blocks_ = 0;
}

void CudaStepState::set_fused_layer_max_rows(int32_t rows) {
  if (rows < 0 || rows > kGemvMaxRows)
    throw Error("--fused-layer-max-rows " + std::to_string(rows) + ": must be 0 to " +
                std::to_string(kGemvMaxRows) + " (the decode GEMV's rows)");
  if (rows == fused_layer_max_rows_) return;
  drop_graphs();
  fused_layer_max_rows_ = rows;
}

void CudaStepState::set_rope_epilogue(bool on) {
  if (on == rope_epilogue_) return;
  drop_graphs();
  rope_epilogue_ = on;
}

void CudaStepState::set_decode_attention(DecodeKernel kernel, const PrefetchPolicy& policy) {
  if (kernel == DecodeKernel::kPagedV1 && config().has_sliding_layers())
    throw Error("--attention paged_v1: " + config().architecture +
                " has sliding-window layers, which only the split kernel serves");
  attention_.set_decode_kernel(kernel, policy);
  drop_graphs();
  reserve_attention();
}

DecodeAttentionParams CudaStepState::decode_params() const {
  const ModelConfig& c = config();
  DecodeAttentionParams p;
  p.q = activations_->q.ptr;
  p.out = activations_->attn.ptr;
  p.num_q_heads = static_cast<int32_t>(c.num_q_heads);
  p.softmax_scale = c.attention_scale > 0 ? static_cast<float>(c.attention_scale)
                                          : 1.f / std::sqrt(static_cast<float>(c.head_dim));
  p.max_seq_len = 1;
  p.kv.k_pool = k_pools_.empty() ? nullptr : k_pools_[0];
  p.kv.v_pool = v_pools_.empty() ? nullptr : v_pools_[0];
  p.kv.block_table = meta_->meta.ptr + meta_->block_table;
  p.kv.seq_lens = meta_->meta.ptr + meta_->seq_lens;
  p.kv.num_blocks = num_blocks_;
  p.kv.block_size = block_size_;
  p.kv.num_kv_heads = static_cast<int32_t>(c.num_kv_heads);
  p.kv.head_dim = static_cast<int32_t>(c.head_dim);
  p.kv.batch_size = std::max(1, step_.batch);
  p.kv.max_blocks_per_seq = table_stride();
  p.kv.layout = KvLayout::kHND;
  p.kv.dtype = c.dtype;
  p.kv.storage = kv_storage_;
  return p;
}

int32_t CudaStepState::prepare(std::span<const BatchSequence> batch, int32_t pad_to,
                               cudaStream_t stream) {
  const ModelConfig& c = config();
  if (!activations_ || num_blocks_ == 0)
    throw Error("CUDA backend: allocate_workspace and allocate_kv_cache come before a step");
  const auto fail = [](const std::string& m) { throw Error("CUDA backend step: " + m); };
  const int32_t seqs = static_cast<int32_t>(batch.size());
  const int32_t batch_rows = std::max(seqs, pad_to);
  if (batch_rows == 0) fail("empty batch");
  if (batch_rows > limits_.max_seqs)
    fail(std::to_string(batch_rows) + " sequences exceed the workspace's " +
         std::to_string(limits_.max_seqs));
  const int32_t stride = table_stride();
  const int32_t groups = groups_.num_groups();
  bool decode_only = true, pending = false;
  int64_t tokens = 0;
  for (int32_t s = 0; s < seqs; ++s) {
    const BatchSequence& b = batch[s];
    if (b.tokens.empty()) fail("sequence " + std::to_string(s) + " has no tokens");
    const int64_t end = int64_t{b.start_position} + static_cast<int64_t>(b.tokens.size());
    if (b.start_position < 0 || end > limits_.max_model_len)
      fail("sequence " + std::to_string(s) + " reaches position " + std::to_string(end) +
           ", beyond max_model_len " + std::to_string(limits_.max_model_len));
    if (groups > 1 ? static_cast<int32_t>(b.group_tables.size()) != groups
                   : !b.group_tables.empty() && b.group_tables.size() != 1)
      fail("sequence " + std::to_string(s) + " has " + std::to_string(b.group_tables.size()) +
           " block tables for " + std::to_string(groups) + " KV cache groups");
    for (int32_t g = 0; g < groups; ++g) {
      const std::span<const int32_t> table = b.table(g);
      if (static_cast<int64_t>(table.size()) < ceil_div(end, block_size_) ||
          static_cast<int32_t>(table.size()) > stride)
        fail("sequence " + std::to_string(s) + " has " + std::to_string(table.size()) +
             " blocks for " + std::to_string(end) + " tokens");
      for (int32_t block : table)
        if (block < 0 || block >= num_blocks_)
          fail("block id " + std::to_string(block) + " outside the pool of " +
               std::to_string(num_blocks_));
    }
    // A pending last token is written on the device (pending_ids()).
    for (size_t i = 0; i + (b.pending_row >= 0 ? 1 : 0) < b.tokens.size(); ++i)
      if (b.tokens[i] < 0 || b.tokens[i] >= c.vocab_size)
        fail("token id " + std::to_string(b.tokens[i]) + " outside the vocabulary of " +
             std::to_string(c.vocab_size));
    if (b.pending_row >= limits_.max_seqs)
      fail("pending token row " + std::to_string(b.pending_row) + " beyond the sampler's " +
           std::to_string(limits_.max_seqs) + " rows");
    pending |= b.pending_row >= 0;
    decode_only &= b.tokens.size() == 1 && b.wants_logits;
    tokens += static_cast<int64_t>(b.tokens.size());
  }
  if (pad_to > seqs && !decode_only) fail("only decode-only batches are padded");
  const int64_t rows = decode_only ? batch_rows : tokens;
  if (rows > row_capacity())
    fail(std::to_string(rows) + " tokens exceed the workspace's " +
         std::to_string(limits_.max_tokens));

  // The previous upload must have left the staging memory before it is rewritten.
  L2KV_CUDA_CHECK(cudaEventSynchronize(meta_->uploaded));
  int32_t* m = meta_->host_meta;
  int32_t* seq_lens = m + meta_->seq_lens;
  int32_t* last_rows = m + meta_->last_rows;
  int32_t* ids = m + meta_->ids;
  int32_t* positions = m + meta_->positions;
  int32_t* slots = m + meta_->slots;
  const auto T = static_cast<size_t>(row_capacity());
  // Group g's table of sequence s: [g][batch_rows][stride]; its KV slots: [g][T].
  const auto table_row = [&](int32_t g, int32_t s) {
    return m + meta_->block_table + (static_cast<int64_t>(g) * batch_rows + s) * stride;
  };
  host_seq_lens_.assign(static_cast<size_t>(batch_rows), 1);
  std::vector<PrefillChunk> chunks;
  int32_t row = 0, logit_rows = 0;
  for (int32_t s = 0; s < batch_rows; ++s) {
    if (s >= seqs) {  // pad row: token 0 at position 0, K/V not kept, attends to block 0
      ids[row] = 0, positions[row] = 0;
      for (int32_t g = 0; g < groups; ++g) {
        slots[g * T + row] = -1;
        table_row(g, s)[0] = 0;
      }
      seq_lens[s] = 1;
      last_rows[logit_rows++] = row++;
      continue;
    }
    const BatchSequence& b = batch[s];
    for (int32_t g = 0; g < groups; ++g) std::ranges::copy(b.table(g), table_row(g, s));
    chunks.push_back({s, row, static_cast<int32_t>(b.tokens.size()), b.start_position});
    for (size_t i = 0; i < b.tokens.size(); ++i) {
      const int32_t pos = b.start_position + static_cast<int32_t>(i);
      ids[row] =
          b.pending_row >= 0 && i + 1 == b.tokens.size() ? -(b.pending_row + 1) : b.tokens[i];
      positions[row] = pos;
      for (int32_t g = 0; g < groups; ++g)
        slots[g * T + row] = b.table(g)[pos / block_size_] * block_size_ + pos % block_size_;
      ++row;
    }
    seq_lens[s] = b.start_position + static_cast<int32_t>(b.tokens.size());
    host_seq_lens_[s] = seq_lens[s];
    if (b.wants_logits) last_rows[logit_rows++] = row - 1;
  }
  if (logit_rows > limits_.max_logit_rows)
    fail(std::to_string(logit_rows) + " logit rows exceed the workspace's " +
         std::to_string(limits_.max_logit_rows));
  // Everything before the tables in one copy; of each table row only the entries a sequence of
  // this step uses (a pitched copy): with a long max_model_len a row's stride is thousands of
  // entries (8,192 at 128K tokens), almost none of them in use. Kernels read no entry past a
  // sequence's length.
  L2KV_CUDA_CHECK(cudaMemcpyAsync(meta_->meta.ptr, m, static_cast<size_t>(meta_->block_table) * 4,
                                  cudaMemcpyHostToDevice, stream));
  size_t used_entries = 1;  // a pad row's block 0
  for (const BatchSequence& b : batch)
    for (int32_t g = 0; g < groups; ++g) used_entries = std::max(used_entries, b.table(g).size());
  const size_t pitch = static_cast<size_t>(stride) * 4;
  L2KV_CUDA_CHECK(cudaMemcpy2DAsync(meta_->meta.ptr + meta_->block_table, pitch,
                                    m + meta_->block_table, pitch, used_entries * 4,
                                    static_cast<size_t>(groups) * static_cast<size_t>(batch_rows),
                                    cudaMemcpyHostToDevice, stream));
  L2KV_CUDA_CHECK(cudaEventRecord(meta_->uploaded, stream));

  step_ = {row, logit_rows, batch_rows, decode_only, false};
  step_.pending_ids = pending;
  // The first step with a prompt chunk computes the pending scales before it stores any K/V.
  step_.calculate_kv_scales =
      !decode_only && kv_scales_pending_ && kv_storage_ == KvStorage::kFp8E4M3;
  const DecodeAttentionParams p = decode_params();
  if (decode_only)
    attention_.plan_decode(p, host_seq_lens_, stream);
  else
    attention_.plan_mixed(p, host_seq_lens_, chunks, stream);
  return logit_rows;
}

int32_t* CudaStepState::pending_ids() const {
  return step_.pending_ids ? meta_->meta.ptr + meta_->ids : nullptr;
}

void CudaStepState::enqueue_forward(cudaStream_t stream) {
  CudaForwardStep f;
  f.rows = step_.rows;
  f.logit_rows = step_.logit_rows;
  f.decode_only = step_.decode_only;
  f.all_logits = step_.all_logits;
  f.fused_layer = step_.rows <= fused_layer_max_rows_ && model_->can_fuse_layer(step_.rows);
  f.calculate_kv_scales = step_.calculate_kv_scales;
  f.rope_epilogue = rope_epilogue_;
  const int32_t* meta = meta_->meta.ptr;
  f.ids = meta + meta_->ids;
  f.positions = meta + meta_->positions;
  f.last_rows = meta + meta_->last_rows;
  // Each layer's pools, and its group's tables and slots, as prepare() packed them.
  const int64_t T = row_capacity(), stride = table_stride();  // as prepare() packed them
  const int64_t layers = config().num_layers;
  layer_k_pools_.resize(static_cast<size_t>(layers));
  layer_v_pools_.resize(static_cast<size_t>(layers));
  layer_tables_.resize(static_cast<size_t>(layers));
  layer_slots_.resize(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    const int64_t g = groups_.layer_group[static_cast<size_t>(l)];
    layer_k_pools_[static_cast<size_t>(l)] = k_pools_[slot_of(l)];
    layer_v_pools_[static_cast<size_t>(l)] = v_pools_[slot_of(l)];
    layer_tables_[static_cast<size_t>(l)] =
        meta + meta_->block_table + g * std::max(1, step_.batch) * stride;
    layer_slots_[static_cast<size_t>(l)] = meta + meta_->slots + g * T;
  }
  f.slots = layer_slots_;
  f.block_tables = layer_tables_;
  f.activations = activations_.get();
  f.attention = decode_params();
  // paged_v1: one launch (and graph) for every length.
  if (attention_.decode_kernel() == DecodeKernel::kPagedV1)
    f.attention.max_seq_len = limits_.max_model_len;
  f.k_pools = layer_k_pools_;
  f.v_pools = layer_v_pools_;
  f.kv_scales = kv_scales_;
  f.attention_op = &attention_;
  f.events = profiling_ ? &op_events_ : nullptr;
  model_->forward(f, stream);
  if (step_.calculate_kv_scales) {  // fixed from now on, also for a replay of this step
    kv_scales_pending_ = false;
    step_.calculate_kv_scales = false;
  }
}

void CudaStepState::forward(cudaStream_t stream) {
  if (step_.rows == 0) throw Error("CUDA backend: forward() without a prepared step");
  if (step_.decode_only && use_graphs_ && !profiling_) {
    const auto it = graphs_.find(step_.batch);
    if (it != graphs_.end()) {
      L2KV_CUDA_CHECK(cudaGraphLaunch(it->second, stream));
      return;
    }
  }
  if (profiling_) {
    destroy_op_events();
    if (!total_events_.start) {
      L2KV_CUDA_CHECK(cudaEventCreate(&total_events_.start));
      L2KV_CUDA_CHECK(cudaEventCreate(&total_events_.stop));
    }
    L2KV_CUDA_CHECK(cudaEventRecord(total_events_.start, stream));
  }
  enqueue_forward(stream);
  if (profiling_) L2KV_CUDA_CHECK(cudaEventRecord(total_events_.stop, stream));
}

const float* CudaStepState::logits() const {
  return activations_ ? activations_->logits.ptr : nullptr;
}

void CudaStepState::hidden_row_logits(int32_t first_row, int32_t rows, float* out,
                                      cudaStream_t stream) {
  if (!activations_ || step_.rows == 0)
    throw Error("CUDA backend: hidden_row_logits() needs a prepared and enqueued step");
  constexpr int32_t kMaxRows = CudaModel::kMaxHiddenRowLogits;
  if (rows < 1 || rows > kMaxRows || first_row < 0 || first_row > step_.rows - rows)
    throw Error("CUDA backend: hidden rows " + std::to_string(first_row) + " + " +
                std::to_string(rows) + " outside the step's " + std::to_string(step_.rows) +
                " rows (at most " + std::to_string(kMaxRows) + " at once)");
  model_->hidden_row_logits(*activations_, first_row, rows, out, stream);
}

int32_t CudaStepState::graph_bucket(int32_t rows) const {
  const auto it = graphs_.lower_bound(rows);
  return it == graphs_.end() ? 0 : it->first;
}

void CudaStepState::capture_decode_graphs(std::span<const int32_t> batch_sizes,
                                          cudaStream_t stream) {
  if (stream == nullptr) throw Error("CUDA backend: graphs are captured on a created stream");
  const bool was_profiling = profiling_;
  profiling_ = false;
  for (int32_t size : batch_sizes) {
    if (size <= 0 || size > limits_.max_seqs)
      throw Error("CUDA backend: graph batch size " + std::to_string(size) + " outside 1.." +
                  std::to_string(limits_.max_seqs));
    if (graphs_.count(size)) continue;
    // A mixture of experts with more slots per expert than its expert GEMV suits runs those
    // steps eagerly (their slots are grouped by expert on the host for cuBLASLt).
    if (!model_->can_capture_rows(size)) continue;
    prepare({}, size, stream);
    enqueue_forward(stream);  // eager first: GEMM plans and kernel attributes are set up here
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    L2KV_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    try {
      enqueue_forward(stream);
    } catch (...) {
      cudaStreamEndCapture(stream, &graph);
      if (graph) cudaGraphDestroy(graph);
      throw;
    }
    L2KV_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    L2KV_CUDA_CHECK(status);
    graphs_[size] = exec;
    // Uploaded now, not at its first replay: that may then run beside other work on the device
    // (a tensor-parallel peer's collective on a shared GPU) and must not wait for it.
    L2KV_CUDA_CHECK(cudaGraphUpload(exec, stream));
    L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  profiling_ = was_profiling;
  step_ = {};
}

std::vector<float> CudaStepState::run_to_host(std::span<const BatchSequence> batch, bool all_logits,
                                              cudaStream_t stream) {
  prepare(batch, 0, stream);
  if (all_logits) {
    if (step_.rows > limits_.max_logit_rows)
      throw Error("CUDA backend: " + std::to_string(step_.rows) +
                  " rows of logits exceed the workspace's " +
                  std::to_string(limits_.max_logit_rows));
    if (step_.decode_only) {  // every row's logits come from the eager prefill path
      std::vector<PrefillChunk> chunks;
      for (size_t s = 0; s < batch.size(); ++s)
        chunks.push_back(
            {static_cast<int32_t>(s), static_cast<int32_t>(s), 1, batch[s].start_position});
      const DecodeAttentionParams p = decode_params();
      attention_.plan_prefill(p.kv, p.num_q_heads, chunks, stream);
    }
    step_.all_logits = true;
    step_.decode_only = false;
  }
  forward(stream);
  const int32_t rows = step_.all_logits ? step_.rows : step_.logit_rows;
  std::vector<float> out(static_cast<size_t>(rows) * config().vocab_size);
  L2KV_CUDA_CHECK(cudaMemcpyAsync(out.data(), activations_->logits.ptr, out.size() * sizeof(float),
                                  cudaMemcpyDeviceToHost, stream));
  L2KV_CUDA_CHECK(cudaStreamSynchronize(stream));
  step_ = {};
  return out;
}

CudaStepState::OpTimes CudaStepState::last_op_times() {
  OpTimes t;
  auto sum = [](const std::vector<ForwardEvents::Pair>& list) {
    double total = 0;
    for (const auto& e : list) {
      float ms = 0;
      L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, e.start, e.stop));
      total += ms;
    }
    return total;
  };
  t.gemm_ms = sum(op_events_.gemm);
  t.attention_ms = sum(op_events_.attention);
  if (total_events_.start) {
    float ms = 0;
    L2KV_CUDA_CHECK(cudaEventElapsedTime(&ms, total_events_.start, total_events_.stop));
    t.total_ms = ms;
  }
  return t;
}

}  // namespace l2kv
