// core/cuda/moe.cu: SwiGLU, sigmoid gate, router scores/top-k and its backward, routing plan,
// dispatch/combine. The router kernels run one thread per token through the CPU's own sequential
// loops (core/router_row.h; E is small), so top-k order and ties equal the CPU's.
#include "core/cuda/common.cuh"
#include "core/cuda/kernels.h"
#include "core/router_row.h"

namespace switchyard::core::cuda_kernels {

namespace {

#define SY_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); i += int64_t{blockDim.x} * gridDim.x)

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void swiglu_forward_kernel(float* out, const float* h, int64_t rows, int64_t I) {
  SY_GRID_STRIDE(j, rows * I) {
    const int64_t r = j / I, i = j % I;
    const float g = h[r * 2 * I + i], u = h[r * 2 * I + I + i];
    out[j] = g * sigmoidf(g) * u;
  }
}
// d silu(g)/dg = s * (1 + g * (1 - s))
__global__ void swiglu_backward_kernel(float* dh, const float* dout, const float* h, int64_t rows,
                                       int64_t I) {
  SY_GRID_STRIDE(j, rows * I) {
    const int64_t r = j / I, i = j % I;
    const float g = h[r * 2 * I + i], u = h[r * 2 * I + I + i], d = dout[j], s = sigmoidf(g);
    dh[r * 2 * I + I + i] = d * g * s;
    dh[r * 2 * I + i] = d * u * s * (1.0f + g * (1.0f - s));
  }
}

__global__ void sigmoid_gate_forward_kernel(float* out, const float* logit, const float* y,
                                            int64_t rows, int64_t C) {
  SY_GRID_STRIDE(j, rows * C) out[j] += sigmoidf(logit[j / C]) * y[j];
}
__global__ void sigmoid_gate_backward_kernel(float* dy, float* dlogit, const float* dout,
                                             const float* logit, const float* y, int64_t rows,
                                             int64_t C) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float s = sigmoidf(logit[r]);
    float dot = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float d = dout[r * C + c];
      dy[r * C + c] = s * d;
      dot += d * y[r * C + c];
    }
    dot = block_sum(dot, sh);
    if (threadIdx.x == 0) dlogit[r] = s * (1.0f - s) * dot;
  }
}

// The CPU's loop for one token (core/router_row.h): one thread per token.
__global__ void router_topk_kernel(float* probs, float* lse, int32_t* idx, float* gates,
                                   const float* logits, int64_t N, int64_t E, int64_t K,
                                   bool sigmoid_scoring, bool renormalize, const float* bias,
                                   float top_p) {
  SY_GRID_STRIDE(t, N) {
    router_row::topk(probs + t * E, lse + t, idx + t * K, gates + t * K, logits + t * E, E, K,
                     sigmoid_scoring, renormalize, bias, top_p);
  }
}
__global__ void router_backward_kernel(float* dlogits, const float* dgates, const float* logits,
                                       const float* probs, const float* lse, const int32_t* idx,
                                       const float* gates, const float* dprobs_all, float z_coef,
                                       int64_t N, int64_t E, int64_t K, bool sigmoid_scoring,
                                       bool renormalize) {
  SY_GRID_STRIDE(t, N) {
    router_row::backward(dlogits + t * E, dgates + t * K,
                         sigmoid_scoring ? logits + t * E : nullptr, probs + t * E, lse[t],
                         idx + t * K, gates + t * K, dprobs_all, z_coef, E, K, sigmoid_scoring,
                         renormalize);
  }
}

// Stable counting sort of the slots by expert in one block: each thread owns experts
// e = tid, tid + blockDim, ... and scans the slots in order (count, then place), so slots of one
// expert keep token order. Slots with idx < 0 (or >= E) get pos -1.
__global__ void route_plan_kernel(int32_t* pos, int32_t* offsets, const int32_t* idx, int64_t S,
                                  int64_t E) {
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    int32_t count = 0;
    for (int64_t s = 0; s < S; ++s) count += idx[s] == e;
    offsets[e + 1] = count;
  }
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x)
    if (idx[s] < 0 || idx[s] >= E) pos[s] = -1;
  __syncthreads();
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    int32_t next = offsets[e];
    for (int64_t s = 0; s < S; ++s)
      if (idx[s] == e) pos[s] = next++;
  }
}

__global__ void dispatch_forward_kernel(float* xp, const float* x, const int32_t* pos, int64_t S,
                                        int64_t K, int64_t C) {
  for (int64_t s = blockIdx.x; s < S; s += gridDim.x) {
    const int32_t p = pos[s];
    if (p < 0) continue;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
      xp[static_cast<int64_t>(p) * C + c] = x[(s / K) * C + c];
  }
}
// out[t] = sum over kept slots in k order; 0 for a token without kept slots.
__global__ void sum_slot_rows_kernel(float* out, const float* rows, const int32_t* pos,
                                     const float* gates, int64_t N, int64_t K, int64_t C) {
  for (int64_t t = blockIdx.x; t < N; t += gridDim.x)
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      float o = 0.f;
      bool first = true;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t p = pos[t * K + k];
        if (p < 0) continue;
        const float v = rows[static_cast<int64_t>(p) * C + c];
        const float term = gates ? gates[t * K + k] * v : v;
        o = first ? term : o + term;
        first = false;
      }
      out[t * C + c] = o;
    }
}
// One block per slot: dy[pos[s]] = gates[s] * dout[s/K]; dgates[s] = dot(dout[s/K], y[pos[s]]).
__global__ void combine_backward_kernel(float* dy, float* dgates, const float* dout,
                                        const float* y, const int32_t* pos, const float* gates,
                                        int64_t S, int64_t K, int64_t C) {
  __shared__ float sh[32];
  for (int64_t s = blockIdx.x; s < S; s += gridDim.x) {
    const int32_t p = pos[s];
    if (p < 0) {
      if (threadIdx.x == 0) dgates[s] = 0.f;
      continue;  // uniform across the block
    }
    const float g = gates[s];
    const float* d = dout + (s / K) * C;
    const float* yr = y + static_cast<int64_t>(p) * C;
    float* dyr = dy + static_cast<int64_t>(p) * C;
    float dot = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      dyr[c] = g * d[c];
      dot += d[c] * yr[c];
    }
    dot = block_sum(dot, sh);
    if (threadIdx.x == 0) dgates[s] = dot;
  }
}

}  // namespace

void swiglu_forward(float* out, const float* h, int64_t rows, int64_t I, cudaStream_t s) {
  if (rows * I > 0) swiglu_forward_kernel<<<blocks_for(rows * I), kThreads, 0, s>>>(out, h, rows, I);
}
void swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows, int64_t I,
                     cudaStream_t s) {
  if (rows * I > 0)
    swiglu_backward_kernel<<<blocks_for(rows * I), kThreads, 0, s>>>(dh, dout, h, rows, I);
}
void sigmoid_gate_forward(float* out, const float* logit, const float* y, int64_t rows, int64_t C,
                          cudaStream_t s) {
  if (rows * C > 0)
    sigmoid_gate_forward_kernel<<<blocks_for(rows * C), kThreads, 0, s>>>(out, logit, y, rows, C);
}
void sigmoid_gate_backward(float* dy, float* dlogit, const float* dout, const float* logit,
                           const float* y, int64_t rows, int64_t C, cudaStream_t s) {
  if (rows > 0)
    sigmoid_gate_backward_kernel<<<row_blocks(rows), kThreads, 0, s>>>(dy, dlogit, dout, logit, y,
                                                                       rows, C);
}
void router_topk(float* probs, float* lse, int32_t* idx, float* gates, const float* logits,
                 int64_t N, int64_t E, int64_t K, bool sigmoid_scoring, bool renormalize,
                 const float* bias, float top_p, cudaStream_t s) {
  if (N > 0)
    router_topk_kernel<<<blocks_for(N, 128), 128, 0, s>>>(probs, lse, idx, gates, logits, N, E, K,
                                                          sigmoid_scoring, renormalize, bias, top_p);
}
void router_backward(float* dlogits, const float* dgates, const float* logits, const float* probs,
                     const float* lse, const int32_t* idx, const float* gates,
                     const float* dprobs_all, float z_coef, int64_t N, int64_t E, int64_t K,
                     bool sigmoid_scoring, bool renormalize, cudaStream_t s) {
  if (N > 0)
    router_backward_kernel<<<blocks_for(N, 128), 128, 0, s>>>(
        dlogits, dgates, logits, probs, lse, idx, gates, dprobs_all, z_coef, N, E, K,
        sigmoid_scoring, renormalize);
}
void route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N, int64_t E,
                int64_t K, cudaStream_t s) {
  const int64_t threads = E < 32 ? 32 : E > 1024 ? 1024 : (E + 31) / 32 * 32;
  route_plan_kernel<<<1, static_cast<unsigned>(threads), 0, s>>>(pos, expert_offsets, idx, N * K, E);
}
void dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N, int64_t K,
                      int64_t C, cudaStream_t s) {
  if (N * K > 0 && C > 0)
    dispatch_forward_kernel<<<row_blocks(N * K), kThreads, 0, s>>>(xp, x, pos, N * K, K, C);
}
void sum_slot_rows(float* out, const float* rows, const int32_t* pos, const float* gates,
                   int64_t N, int64_t K, int64_t C, cudaStream_t s) {
  if (N > 0 && C > 0)
    sum_slot_rows_kernel<<<row_blocks(N), kThreads, 0, s>>>(out, rows, pos, gates, N, K, C);
}
void combine_backward(float* dy, float* dgates, const float* dout, const float* y,
                      const int32_t* pos, const float* gates, int64_t N, int64_t K, int64_t C,
                      cudaStream_t s) {
  if (N * K > 0)
    combine_backward_kernel<<<row_blocks(N * K), kThreads, 0, s>>>(dy, dgates, dout, y, pos, gates,
                                                                   N * K, K, C);
}

}  // namespace switchyard::core::cuda_kernels
