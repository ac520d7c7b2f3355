// The CPU oracle of decode attention: double-precision dot products and softmax over the
// same paged layout the kernels read.
#pragma once

#include <vector>

#include "l2kv/kernels/attention/decode_attention.h"

namespace l2kv {

// `host_params` is a DecodeAttentionParams whose pointers (q, pools, block table, lengths)
// all point to host memory; `out` is ignored. Returns [batch, num_q_heads, head_dim] in fp32.
// Validates the parameters first (throws l2kv::Error).
std::vector<float> decode_attention_reference(const DecodeAttentionParams& host_params);

}  // namespace l2kv
