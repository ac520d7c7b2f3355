// The graph of a Llama / Mistral / Qwen2 decoder, written once for every backend. A backend
// supplies the ops (CpuModel and CudaModel each have a GraphOps) and this function fixes their
// order, so the backends cannot drift apart.
#pragma once

#include <cstdint>

namespace l2kv {

template <typename Ops>
void run_decoder_graph(Ops& ops, int64_t num_layers) {
  ops.embed_tokens();  // residual = embedding rows of the new tokens
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    ops.attention_norm(layer);      // residual += previous block's output; h = RMSNorm(residual)
    ops.qkv_projection(layer);      // q, k, v = h W (+ bias)
    ops.rope_and_append_kv(layer);  // rotate q and k at their positions; append k, v to the cache
    ops.attention(layer);           // causal attention of q over everything cached
    ops.output_projection(layer);   // block output = attention W_o
    ops.mlp_norm(layer);            // residual += block output; h = RMSNorm(residual)
    ops.mlp(layer);                 // block output = down(silu(gate h) * up h)
  }
  ops.final_norm();  // residual += block output; h = RMSNorm(residual)
  ops.lm_head();     // logits = h W_lm
}

}  // namespace l2kv
