// Launchers of the transformer ops around attention (bf16 activations, fp32 residual stream).
// Each takes a stream, checks its launch, and allocates nothing.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "l2kv/kv_cache/paged_kv.h"

namespace l2kv::ops {

// residual[t, :] = embed[tokens[t], :] (fp32 residual stream).
void embed(const int32_t* tokens, int32_t num_tokens, const __nv_bfloat16* embed, int32_t hidden,
           float* residual, cudaStream_t stream);

// If `add` is set: residual += add (fp32). Then out = bf16(RMSNorm(residual) * weight).
void add_rmsnorm(float* residual, const __nv_bfloat16* add, const __nv_bfloat16* weight, float eps,
                 int32_t num_tokens, int32_t hidden, __nv_bfloat16* out, cudaStream_t stream);

// Adds `bias` (nullable, [q_dim + 2 kv_dim]) to the fused QKV projection [tokens, q|k|v], applies
// neox RoPE to q and k at `positions`, writes q to `q_out` [tokens, q_heads, head_dim] and k, v
// into the paged cache at `slots` (physical block * block_size + offset).
void rope_and_cache(const __nv_bfloat16* qkv, const __nv_bfloat16* bias, const int32_t* positions,
                    const int32_t* slots, const float* inv_freq, int32_t num_tokens, int32_t q_heads,
                    const PagedKvCache& kv, __nv_bfloat16* q_out, cudaStream_t stream);

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i].
void silu_mul(const __nv_bfloat16* gate_up, int32_t num_tokens, int32_t inter, __nv_bfloat16* out,
              cudaStream_t stream);

// out[r, :] = in[rows[r], :] for bf16 rows of `width`.
void gather_rows(const __nv_bfloat16* in, const int32_t* rows, int32_t num_rows, int32_t width,
                 __nv_bfloat16* out, cudaStream_t stream);

}  // namespace l2kv::ops
