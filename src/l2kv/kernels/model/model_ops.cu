#include "l2kv/kernels/model/model_ops.h"

#include "l2kv/core/cuda_check.h"

namespace l2kv::ops {
namespace {

constexpr int kThreads = 256;

__global__ void embed_kernel(const int32_t* tokens, const __nv_bfloat16* embed, int32_t hidden, float* residual) {
  const int t = blockIdx.x;
  const __nv_bfloat16* row = embed + static_cast<int64_t>(tokens[t]) * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) residual[static_cast<int64_t>(t) * hidden + i] = __bfloat162float(row[i]);
}

__global__ void add_rmsnorm_kernel(float* residual, const __nv_bfloat16* add, const __nv_bfloat16* weight, float eps,
                                   int32_t hidden, __nv_bfloat16* out) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * hidden;
  float sum = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float x = residual[base + i];
    if (add) {
      x += __bfloat162float(add[base + i]);
      residual[base + i] = x;
    }
    sum += x * x;
  }
  __shared__ float partial[kThreads / 32];
  for (int m = 16; m >= 1; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = sum;
  __syncthreads();
  float total = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  const float scale = rsqrtf(total / hidden + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    out[base + i] = __float2bfloat16_rn(__bfloat162float(weight[i]) * (residual[base + i] * scale));
}

// One block per token; threads over (head, pair) for q and k heads, then v.
__global__ void rope_and_cache_kernel(const __nv_bfloat16* qkv, const __nv_bfloat16* bias, const int32_t* positions,
                                      const int32_t* slots, const float* inv_freq, int32_t q_heads,
                                      const PagedKvCache kv, __nv_bfloat16* q_out) {
  const int t = blockIdx.x;
  const int d = kv.head_dim, half = d / 2;
  const int q_dim = q_heads * d, kv_dim = kv.num_kv_heads * d, width = q_dim + 2 * kv_dim;
  const __nv_bfloat16* row = qkv + static_cast<int64_t>(t) * width;
  auto value = [&](int i) { return __bfloat162float(row[i]) + (bias ? __bfloat162float(bias[i]) : 0.f); };
  const float pos = static_cast<float>(positions[t]);
  const int slot = slots[t];
  const int block = slot / kv.block_size, in_block = slot % kv.block_size;
  __nv_bfloat16* k_pool = static_cast<__nv_bfloat16*>(kv.k_pool);
  __nv_bfloat16* v_pool = static_cast<__nv_bfloat16*>(kv.v_pool);
  // Rotated pairs of q and k heads.
  const int rope_pairs = (q_heads + kv.num_kv_heads) * half;
  for (int p = threadIdx.x; p < rope_pairs; p += blockDim.x) {
    const int head = p / half, i = p % half;
    const bool is_q = head < q_heads;
    const int base = is_q ? head * d : q_dim + (head - q_heads) * d;
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    const float a = value(base + i), b = value(base + i + half);
    const __nv_bfloat16 ra = __float2bfloat16_rn(a * c - b * s), rb = __float2bfloat16_rn(b * c + a * s);
    if (is_q) {
      q_out[static_cast<int64_t>(t) * q_dim + base + i] = ra;
      q_out[static_cast<int64_t>(t) * q_dim + base + i + half] = rb;
    } else {
      const int64_t off = kv.offset(block, in_block, head - q_heads);
      k_pool[off + i] = ra;
      k_pool[off + i + half] = rb;
    }
  }
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    const int head = i / d;
    v_pool[kv.offset(block, in_block, head) + i % d] = __float2bfloat16_rn(value(q_dim + kv_dim + i));
  }
}

__global__ void silu_mul_kernel(const __nv_bfloat16* gate_up, int32_t inter, __nv_bfloat16* out) {
  const int64_t t = blockIdx.x;
  for (int i = threadIdx.x; i < inter; i += blockDim.x) {
    const float g = __bfloat162float(gate_up[t * 2 * inter + i]);
    const float u = __bfloat162float(gate_up[t * 2 * inter + inter + i]);
    out[t * inter + i] = __float2bfloat16_rn(g / (1.f + __expf(-g)) * u);
  }
}

__global__ void gather_rows_kernel(const __nv_bfloat16* in, const int32_t* rows, int32_t width, __nv_bfloat16* out) {
  const int64_t r = blockIdx.x;
  for (int i = threadIdx.x; i < width; i += blockDim.x) out[r * width + i] = in[static_cast<int64_t>(rows[r]) * width + i];
}

}  // namespace

void embed(const int32_t* tokens, int32_t num_tokens, const __nv_bfloat16* table, int32_t hidden, float* residual,
           cudaStream_t stream) {
  embed_kernel<<<num_tokens, kThreads, 0, stream>>>(tokens, table, hidden, residual);
  L2KV_CUDA_CHECK_LAUNCH();
}

void add_rmsnorm(float* residual, const __nv_bfloat16* add, const __nv_bfloat16* weight, float eps, int32_t num_tokens,
                 int32_t hidden, __nv_bfloat16* out, cudaStream_t stream) {
  add_rmsnorm_kernel<<<num_tokens, kThreads, 0, stream>>>(residual, add, weight, eps, hidden, out);
  L2KV_CUDA_CHECK_LAUNCH();
}

void rope_and_cache(const __nv_bfloat16* qkv, const __nv_bfloat16* bias, const int32_t* positions, const int32_t* slots,
                    const float* inv_freq, int32_t num_tokens, int32_t q_heads, const PagedKvCache& kv,
                    __nv_bfloat16* q_out, cudaStream_t stream) {
  rope_and_cache_kernel<<<num_tokens, kThreads, 0, stream>>>(qkv, bias, positions, slots, inv_freq, q_heads, kv, q_out);
  L2KV_CUDA_CHECK_LAUNCH();
}

void silu_mul(const __nv_bfloat16* gate_up, int32_t num_tokens, int32_t inter, __nv_bfloat16* out, cudaStream_t stream) {
  silu_mul_kernel<<<num_tokens, kThreads, 0, stream>>>(gate_up, inter, out);
  L2KV_CUDA_CHECK_LAUNCH();
}

void gather_rows(const __nv_bfloat16* in, const int32_t* rows, int32_t num_rows, int32_t width, __nv_bfloat16* out,
                 cudaStream_t stream) {
  gather_rows_kernel<<<num_rows, kThreads, 0, stream>>>(in, rows, width, out);
  L2KV_CUDA_CHECK_LAUNCH();
}

}  // namespace l2kv::ops
