#include "l2kv/kernels/attention/decode_attention.h"

#include <algorithm>
#include <string>

#include "l2kv/core/error.h"

namespace l2kv {

void validate_decode_attention(const DecodeAttentionParams& params,
                               std::span<const int32_t> host_seq_lens,
                               std::span<const int32_t> host_block_table) {
  validate_paged_kv(params.kv, host_seq_lens, host_block_table);
  const auto fail = [](const std::string& m) { throw Error("invalid decode attention: " + m); };
  const PagedKvCache& kv = params.kv;
  if (kv.head_dim != 64 && kv.head_dim != 128 && kv.head_dim != 256)
    fail("head_dim must be 64, 128 or 256, got " + std::to_string(kv.head_dim));
  if (params.num_q_heads <= 0 || params.num_q_heads % kv.num_kv_heads != 0)
    fail(std::to_string(params.num_q_heads) + " query heads do not divide into " +
         std::to_string(kv.num_kv_heads) + " KV heads");
  if (params.group_size() > kMaxGqaGroup)
    fail("at most " + std::to_string(kMaxGqaGroup) +
         " query heads per KV head are supported, got " + std::to_string(params.group_size()));
  if (params.q == nullptr || params.out == nullptr) fail("q and out must be set");
  if (!(params.softmax_scale > 0.f)) fail("softmax_scale must be positive");
  const int32_t longest = *std::ranges::max_element(host_seq_lens);
  if (params.max_seq_len != longest)
    fail("max_seq_len is " + std::to_string(params.max_seq_len) + " but the longest sequence has " +
         std::to_string(longest) + " tokens");
}

PagedV1Plan plan_paged_v1(int32_t max_seq_len, int32_t block_size, int32_t batch,
                          int32_t num_q_heads, int32_t sm_count) {
  if (max_seq_len < 1 || block_size < 1 || kPagedV1PartitionTokens % block_size != 0 || batch < 1 ||
      num_q_heads < 1 || sm_count < 1)
    throw Error("paged_v1 plan: max_seq_len " + std::to_string(max_seq_len) + ", block size " +
                std::to_string(block_size) + ", batch " + std::to_string(batch) + ", " +
                std::to_string(num_q_heads) + " heads, " + std::to_string(sm_count) +
                " SMs: each must be positive and the block size divide " +
                std::to_string(kPagedV1PartitionTokens));
  PagedV1Plan plan;
  if (max_seq_len <= kPagedV1SinglePassMaxLen) {
    plan.partition_tokens = (max_seq_len + block_size - 1) / block_size * block_size;
    return plan;
  }
  plan.partition_tokens = kPagedV1PartitionTokens;
  plan.max_partitions = (max_seq_len + kPagedV1PartitionTokens - 1) / kPagedV1PartitionTokens;
  const int64_t pairs = int64_t{batch} * num_q_heads;
  const int64_t target = int64_t{kPagedV1TargetBlocksPerSm} * sm_count;
  plan.grid_partitions = static_cast<int32_t>(
      std::clamp<int64_t>((target + pairs - 1) / pairs, 1, plan.max_partitions));
  return plan;
}

int64_t paged_v1_workspace_floats(int32_t batch, int32_t num_q_heads, int32_t head_dim,
                                  int32_t max_seq_len) {
  if (max_seq_len <= kPagedV1SinglePassMaxLen) return 0;
  const int64_t partitions =
      (int64_t{max_seq_len} + kPagedV1PartitionTokens - 1) / kPagedV1PartitionTokens;
  return int64_t{batch} * num_q_heads * partitions * (head_dim + 2);  // output, max, exp-sum
}

PrefetchPolicy parse_prefetch_policy(const std::string& text) {
  std::string base = text;
  PrefetchPolicy policy;
  size_t plus;
  while ((plus = base.rfind('+')) != std::string::npos) {
    const std::string suffix = base.substr(plus + 1);
    base.resize(plus);
    if (suffix == "evict_last")
      policy.prefetch_hint = L2EvictionHint::kEvictLast;
    else if (suffix == "evict_first")
      policy.prefetch_hint = L2EvictionHint::kEvictFirst;
    else if (suffix == "stream")
      policy.load_hint = L2EvictionHint::kEvictFirst;
    else if (suffix == "every_head")
      policy.group_leader_only = false;
    else if (suffix == "pdl")
      policy.pdl = true;
    else
      throw Error("prefetch policy '" + text + "': unknown suffix '+" + suffix +
                  "' (expected +evict_last, +evict_first, +stream, +every_head or +pdl)");
  }
  if (base == "off") {
    policy.mode = PrefetchMode::kOff;
  } else if (base == "auto") {
    policy.mode = PrefetchMode::kAuto;
  } else if (base == "on" || (base.rfind("on:", 0) == 0 && base.size() > 3)) {
    policy.mode = PrefetchMode::kFixedDistance;
    policy.distance = 1;
    if (base.size() > 3) {
      try {
        size_t used = 0;
        policy.distance = std::stoi(base.substr(3), &used);
        if (used != base.size() - 3) throw std::invalid_argument("trailing");
      } catch (const std::exception&) {
        throw Error("prefetch policy '" + text + "': distance must be an integer");
      }
      if (policy.distance < 1 || policy.distance > 64)
        throw Error("prefetch policy '" + text + "': distance must be between 1 and 64");
    }
  } else {
    throw Error("prefetch policy '" + text + "': expected off, on, on:N or auto");
  }
  return policy;
}

std::string to_string(const PrefetchPolicy& policy) {
  std::string s;
  switch (policy.mode) {
    case PrefetchMode::kOff:
      s = "off";
      break;
    case PrefetchMode::kFixedDistance:
      s = "on:" + std::to_string(policy.distance);
      break;
    case PrefetchMode::kAuto:
      s = "auto";
      break;
  }
  if (policy.prefetch_hint == L2EvictionHint::kEvictLast) s += "+evict_last";
  if (policy.prefetch_hint == L2EvictionHint::kEvictFirst) s += "+evict_first";
  if (policy.load_hint == L2EvictionHint::kEvictFirst) s += "+stream";
  if (!policy.group_leader_only) s += "+every_head";
  if (policy.pdl) s += "+pdl";
  return s;
}

}  // namespace l2kv
