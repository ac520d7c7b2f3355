// The mixture-of-experts block on the GPU (Mixtral, Qwen3-MoE): the router's top-k choice, the
// chosen experts' projections for one (token, expert) slot each, and their weighted sum. Slot
// s = t * k + j is token t's j-th choice. Pointers to 16-bit data are untyped; `dtype` says
// which. Launchers check their launch and allocate nothing; all are CUDA-graph capturable. The
// weighted sum of each token's slots is added by the next RMSNorm (ops::ExpertSum, model_ops.h).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/core/dtype.h"

namespace l2kv::ops {

// Largest expert count moe_route and moe_group take (one warp scans a token's scores; one
// block counts the slots per expert).
constexpr int32_t kMoeMaxExperts = 1024;
// Largest experts per token the routing takes.
constexpr int32_t kMoeMaxTopK = 32;

// For each of `num_tokens` rows of router logits [num_tokens, num_experts] (fp32): the softmax
// over all experts in fp32, the `top_k` largest probabilities (ties to the lower expert index),
// each divided by their sum when `normalize` (norm_topk_prob; Mixtral always), as transformers'
// Mixtral and Qwen3-MoE blocks compute them. Writes experts[slot] and weights[slot]. `pdl`:
// launched to start while the kernel ahead finishes (it waits for it before reading).
void moe_route(const float* router_logits, int32_t num_tokens, int32_t num_experts, int32_t top_k,
               bool normalize, int32_t* experts, float* weights, cudaStream_t stream,
               bool pdl = false);

// Groups the slots by expert on the device: first[e] .. first[e + 1] - 1 index `by_expert`, the
// slots that chose expert e (first has num_experts + 1 entries); active[0] is the number of
// experts chosen at all and active[1..] those experts (num_experts + 1 entries). One block; any
// slot count. `pdl` as moe_route's.
void moe_group(const int32_t* experts, int32_t num_slots, int32_t num_experts, int32_t* first,
               int32_t* by_expert, int32_t* active, cudaStream_t stream, bool pdl = false);

// y[s, :] = x[s / slots_per_row, :] W[e]^T for every slot s of every chosen expert e
// (moe_group's lists; `max_active` bounds how many there are: min(experts, slots)), W stacked
// per expert [num_experts][out][in] (16-bit), x [rows, in], y [slots, out],
// fp32 sums rounded to dtype. A weight-streaming GEMV per expert over its slots, on tensor
// cores: each chosen expert's weights are read once per 8 of its slots, unchosen ones not at
// all. `in` a multiple of 8. Both expert GEMVs let the next kernel start early (programmatic
// dependent launch). With `pdl` the kernel is launched that way itself: the kernel ahead of it
// may still run, and may write x but not the slot lists or W (moe_group's lists must come from
// a kernel that finished before the one ahead began); the weights go to L2 while it waits.
void expert_gemv(DType dtype, const void* x, int32_t slots_per_row, const int32_t* first,
                 const int32_t* by_expert, const int32_t* active, int32_t max_active, const void* w,
                 int64_t out, int64_t in, void* y, cudaStream_t stream, bool pdl = false);

// expert_gemv over an expert's [gate; up] weights ([num_experts][2 inter][in]) with SiLU x up
// applied on the way out: act[s, i] = silu(gate[s, i]) * up[s, i], each product rounded to
// dtype first, as gated_mul computes it from a stored gate_up (so the two-kernel chain and this
// give the same bits). act is [slots, inter].
void expert_gemv_silu_mul(DType dtype, const void* x, int32_t slots_per_row, const int32_t* first,
                          const int32_t* by_expert, const int32_t* active, int32_t max_active,
                          const void* w_gate_up, int64_t inter, int64_t in, void* act,
                          cudaStream_t stream, bool pdl = false);

}  // namespace l2kv::ops
