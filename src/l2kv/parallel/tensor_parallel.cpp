#include "l2kv/parallel/tensor_parallel.h"

#include <string>

#include "l2kv/core/error.h"

namespace l2kv {

TpShard tp_shard(const ModelConfig& c, int32_t rank, int32_t size) {
  const std::string what = "tensor parallelism over " + std::to_string(size) + " ranks: ";
  if (size < 1)
    throw Error("tensor parallelism needs at least one rank, got " + std::to_string(size));
  if (rank < 0 || rank >= size)
    throw Error(what + "rank " + std::to_string(rank) + " is outside [0, " + std::to_string(size) +
                ")");
  if (c.num_experts > 0 || c.gemma)
    throw Error(what + c.architecture +
                " is not covered yet (dense Llama, Mistral, Qwen2 and Qwen3 models are)");
  if (c.num_q_heads % size != 0)
    throw Error(what + std::to_string(c.num_q_heads) + " attention heads do not divide evenly");
  if (c.num_kv_heads >= size ? c.num_kv_heads % size != 0 : size % c.num_kv_heads != 0)
    throw Error(what + std::to_string(c.num_kv_heads) +
                " KV heads neither divide evenly nor divide the rank count");
  if (c.intermediate_size % size != 0)
    throw Error(what + "the MLP's " + std::to_string(c.intermediate_size) +
                " features do not divide evenly");
  TpShard s;
  s.rank = rank;
  s.size = size;
  s.q_heads = c.num_q_heads / size;
  s.q_head_begin = rank * s.q_heads;
  if (c.num_kv_heads >= size) {
    s.kv_heads = c.num_kv_heads / size;
    s.kv_head_begin = rank * s.kv_heads;
  } else {  // size / kv_heads consecutive ranks share a KV head
    s.kv_heads = 1;
    s.kv_head_begin = rank / (size / c.num_kv_heads);
  }
  s.inter = c.intermediate_size / size;
  s.inter_begin = rank * s.inter;
  s.vocab_begin = c.vocab_size * rank / size;
  s.vocab = c.vocab_size * (rank + 1) / size - s.vocab_begin;
  return s;
}

}  // namespace l2kv
