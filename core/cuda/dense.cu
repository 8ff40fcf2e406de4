// core/cuda/dense.cu: embedding, RMSNorm, RoPE and cross-entropy kernels. Row kernels run one block
// per row (grid-stride over rows); row sums are reduced in double, as the CPU's are.
#include "core/cuda/common.cuh"
#include "core/cuda/kernels.h"

namespace switchyard::core::cuda_kernels {

namespace {

__global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const float* wte,
                                         int64_t N, int64_t C) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const float* src = wte + static_cast<int64_t>(tokens[n]) * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = src[c];
  }
}
// One thread per column walks every token in order: race-free with repeated tokens and bitwise
// the CPU's sums. Parallel over C only (a first version: a sort by token would be faster).
__global__ void embedding_backward_kernel(float* dwte, const float* dout, const int32_t* tokens,
                                          int64_t N, int64_t C) {
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < C;
       c += int64_t{blockDim.x} * gridDim.x)
    for (int64_t n = 0; n < N; ++n) dwte[static_cast<int64_t>(tokens[n]) * C + c] += dout[n * C + c];
}

// out = x * rstd * w with x = a, or x = sum = a + b (written first; sum may alias a or b: each
// element is read and written by one thread).
__global__ void rmsnorm_forward_kernel(float* sum, float* out, float* rstd, const float* a,
                                       const float* b, const float* w, int64_t N, int64_t C,
                                       float eps) {
  __shared__ double sh[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const float* x = a + r * C;
    if (sum) {
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) sum[r * C + c] = a[r * C + c] + b[r * C + c];
      x = sum + r * C;
    }
    float acc = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) acc += x[c] * x[c];
    const double ss = block_sum(static_cast<double>(acc), sh);
    const float rs = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(C) + eps));
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[r * C + c] = (x[c] * rs) * w[c];
    if (threadIdx.x == 0) rstd[r] = rs;
  }
}
// dx (= or +=) rs*w*g - x*rs^3/C * sum_c g w x, per row.
__global__ void rmsnorm_dx_kernel(float* dx, const float* dout, const float* x, const float* w,
                                  const float* rstd, int64_t N, int64_t C, bool accumulate) {
  __shared__ double sh[32];
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    const float* g = dout + r * C;
    const float* xr = x + r * C;
    float acc = 0.f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) acc += g[c] * w[c] * xr[c];
    const double dot = block_sum(static_cast<double>(acc), sh);
    const float rs = rstd[r];
    const float k = static_cast<float>(dot * rs * rs * rs / static_cast<double>(C));
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const float v = rs * (w[c] * g[c]) - k * xr[c];
      if (accumulate) dx[r * C + c] += v;
      else dx[r * C + c] = v;
    }
  }
}
// dw[c] += sum_r g x rs: one thread per column, rows in order, in double (deterministic).
__global__ void rmsnorm_dw_kernel(float* dw, const float* dout, const float* x, const float* rstd,
                                  int64_t N, int64_t C) {
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < C;
       c += int64_t{blockDim.x} * gridDim.x) {
    double s = 0;
    for (int64_t r = 0; r < N; ++r) s += dout[r * C + c] * (x[r * C + c] * rstd[r]);
    dw[c] += static_cast<float>(s);
  }
}

// One thread per (row, head, i < HD/2) of the q and k heads; angles in double as the CPU's table.
// Position of row r: pos0 + r % T, less doc_start[r] with packed rows.
__global__ void rope_kernel(float* qkv, const int32_t* doc_start, int64_t pos0, int64_t N, int64_t T,
                            int64_t heads, int64_t W, int64_t HD, float theta, float sign) {
  const int64_t half = HD / 2, n = N * heads * half;
  for (int64_t j = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; j < n;
       j += int64_t{blockDim.x} * gridDim.x) {
    const int64_t i = j % half, h = (j / half) % heads, r = j / (half * heads);
    const double inv_freq = pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / HD);
    const int64_t pos = pos0 + r % T - (doc_start ? doc_start[r] : 0);
    const double ang = static_cast<double>(pos) * inv_freq;
    const float c = static_cast<float>(cos(ang)), si = sign * static_cast<float>(sin(ang));
    float* x1 = qkv + r * W + h * HD + i;
    float* x2 = x1 + half;
    const float a = *x1, b = *x2;
    *x1 = a * c - b * si;
    *x2 = b * c + a * si;
  }
}

// The row's max m and sum_j exp(x[j] - m) (in double), for every thread of the block.
__device__ double row_max_sum_exp(const float* x, int64_t V, float& m, float* shf, double* shd) {
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, x[j]);
  m = block_max(mx, shf);
  double s = 0;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) s += expf(x[j] - m);
  return block_sum(s, shd);
}

// losses[i] = logsumexp(x) - x[t]; 0 for t < 0; NaN for t >= V (the CPU throws; here the NaN
// reaches the loss and the trainer's non-finite check).
__global__ void cross_entropy_forward_kernel(float* losses, const float* logits,
                                             const int32_t* targets, int64_t N, int64_t V) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int32_t t = targets[i];
    if (t < 0 || t >= V) {
      if (threadIdx.x == 0) losses[i] = t < 0 ? 0.f : __int_as_float(0x7fc00000);
      continue;  // uniform across the block: no thread reaches a barrier below
    }
    const float* x = logits + i * V;
    float m;
    const double s = row_max_sum_exp(x, V, m, shf, shd);
    if (threadIdx.x == 0) losses[i] = static_cast<float>(static_cast<double>(m) + log(s) - static_cast<double>(x[t]));
  }
}
// dlogits = (softmax - onehot) * dloss; may run in place (dlogits == logits): every element is
// read by the reductions, which end at a barrier, then read and written by one thread.
__global__ void cross_entropy_backward_kernel(float* dlogits, const float* logits,
                                              const int32_t* targets, const float* dloss,
                                              int64_t N, int64_t V) {
  __shared__ float shf[32];
  __shared__ double shd[32];
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const int32_t t = targets[i];
    float* d = dlogits + i * V;
    if (t < 0 || t >= V) {
      const float fill = t < 0 ? 0.f : __int_as_float(0x7fc00000);
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) d[j] = fill;
      continue;
    }
    const float* x = logits + i * V;
    float m;
    const double s = row_max_sum_exp(x, V, m, shf, shd);
    const float dl = dloss[i];
    const float k = static_cast<float>(static_cast<double>(dl) / s);
    for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
      const float e = expf(x[j] - m) * k;
      d[j] = j == t ? e - dl : e;
    }
    __syncthreads();  // the next row's reductions reuse the shared buffers only after a barrier
  }
}

}  // namespace

void embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N, int64_t C,
                       cudaStream_t s) {
  if (N > 0 && C > 0) embedding_forward_kernel<<<row_blocks(N), kThreads, 0, s>>>(out, tokens, wte, N, C);
}
void embedding_backward(float* dwte, const float* dout, const int32_t* tokens, int64_t N,
                        int64_t C, cudaStream_t s) {
  if (N > 0 && C > 0)
    embedding_backward_kernel<<<blocks_for(C), kThreads, 0, s>>>(dwte, dout, tokens, N, C);
}
void rmsnorm_forward(float* sum, float* out, float* rstd, const float* a, const float* b,
                     const float* w, int64_t N, int64_t C, float eps, cudaStream_t s) {
  if (N > 0)
    rmsnorm_forward_kernel<<<row_blocks(N), kThreads, 0, s>>>(sum, out, rstd, a, b, w, N, C, eps);
}
void rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x, const float* w,
                      const float* rstd, int64_t N, int64_t C, bool accumulate, cudaStream_t s) {
  if (N <= 0 || C <= 0) return;
  rmsnorm_dx_kernel<<<row_blocks(N), kThreads, 0, s>>>(dx, dout, x, w, rstd, N, C, accumulate);
  rmsnorm_dw_kernel<<<blocks_for(C), kThreads, 0, s>>>(dw, dout, x, rstd, N, C);
}
void rope(float* qkv, const int32_t* doc_start, int64_t pos0, int64_t B, int64_t T, int64_t NH,
          int64_t NKV, int64_t HD, float theta, float sign, cudaStream_t s) {
  const int64_t N = B * T, heads = NH + NKV, n = N * heads * (HD / 2);
  if (n > 0)
    rope_kernel<<<blocks_for(n), kThreads, 0, s>>>(qkv, doc_start, pos0, N, T, heads,
                                                   (NH + 2 * NKV) * HD, HD, theta, sign);
}
void cross_entropy_forward(float* losses, const float* logits, const int32_t* targets, int64_t N,
                           int64_t V, cudaStream_t s) {
  if (N > 0)
    cross_entropy_forward_kernel<<<row_blocks(N), kThreads, 0, s>>>(losses, logits, targets, N, V);
}
void cross_entropy_backward(float* dlogits, const float* logits, const int32_t* targets,
                            const float* dloss, int64_t N, int64_t V, cudaStream_t s) {
  if (N > 0)
    cross_entropy_backward_kernel<<<row_blocks(N), kThreads, 0, s>>>(dlogits, logits, targets,
                                                                     dloss, N, V);
}

}  // namespace switchyard::core::cuda_kernels
