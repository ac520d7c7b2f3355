// The graph of a Llama / Mistral / Qwen2 / Qwen3 decoder, written once for every backend. A backend
// supplies the ops (CpuModel and CudaModel each have a GraphOps) and this function fixes their
// order, so the backends cannot drift apart. A layer is five ops, each what one fused CUDA
// kernel does at one decode row (gemv.h; at 2-16 rows of a bf16 model gate_up is two kernels);
// the CPU backend composes them from plain steps.
#pragma once

#include <cstdint>

namespace l2kv {

template <typename Ops>
void run_decoder_graph(Ops& ops, int64_t num_layers) {
  ops.embed_tokens();  // residual = embedding rows of the new tokens
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    // h = RMSNorm(residual); q, k, v = h W (+ bias); RMSNorm of each q and k head (Qwen3);
    // rotate q and k at their positions; append k, v to the cache.
    ops.norm_qkv_rope(layer);
    ops.attention(layer);              // causal attention of q over everything cached
    ops.output_projection_add(layer);  // residual += attention W_o
    ops.norm_gate_up_silu(layer);      // h = RMSNorm(residual); act = silu(gate h) * up h
    ops.down_projection_add(layer);    // residual += act W_down
  }
  ops.final_norm();  // h = RMSNorm(residual)
  ops.lm_head();     // logits = h W_lm
}

}  // namespace l2kv
