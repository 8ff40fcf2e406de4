// core/cuda/elementwise.cu: elementwise kernels, bf16/fp16 rounding, packing and unpacking, small
// uploads, bias gradient, sum of squares and AdamW. Grid-stride loops over 64-bit indices.
#include <algorithm>
#include <cstring>

#include "core/cuda/common.cuh"
#include "core/cuda/kernels.h"

namespace switchyard::core::cuda_kernels {

namespace {

#define SY_GRID_STRIDE(i, n) \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n); i += int64_t{blockDim.x} * gridDim.x)

__global__ void add_kernel(float* out, const float* a, const float* b, int64_t n) {
  SY_GRID_STRIDE(i, n) out[i] = a[i] + b[i];
}
__global__ void axpy_kernel(float* y, float alpha, const float* x, int64_t n) {
  SY_GRID_STRIDE(i, n) y[i] += alpha * x[i];
}
__global__ void scale_kernel(float* x, float alpha, int64_t n) {
  SY_GRID_STRIDE(i, n) x[i] *= alpha;
}
__global__ void scale_rows_kernel(float* C, int64_t ldc, int64_t rows, int64_t cols, float beta) {
  SY_GRID_STRIDE(i, rows * cols) {
    float* c = C + (i / cols) * ldc + i % cols;
    *c = beta == 0.f ? 0.f : beta * *c;
  }
}
__global__ void add_bias_kernel(float* x, const float* bias, int64_t rows, int64_t cols) {
  SY_GRID_STRIDE(i, rows * cols) x[i] += bias[i % cols];
}
// One thread per column, rows summed in order in double (as the CPU does): deterministic.
__global__ void bias_backward_kernel(float* dbias, const float* dout, int64_t rows, int64_t cols) {
  SY_GRID_STRIDE(c, cols) {
    double s = 0;
    for (int64_t r = 0; r < rows; ++r) s += dout[r * cols + c];
    dbias[c] += static_cast<float>(s);
  }
}
template <bool Bf16>
__global__ void round_rows_kernel(float* dst, int64_t ldd, const float* src, int64_t lds,
                                  int64_t rows, int64_t cols) {
  SY_GRID_STRIDE(i, rows * cols) {
    const int64_t r = i / cols, c = i % cols;
    const float v = src[r * lds + c];
    dst[r * ldd + c] = Bf16 ? round_bf16(v) : round_f16(v);
  }
}
template <bool Bf16>
__global__ void pack_half_kernel(uint16_t* dst, const float* src, int64_t lds, int64_t rows,
                                 int64_t cols) {
  SY_GRID_STRIDE(i, rows * cols) {
    const float v = src[(i / cols) * lds + i % cols];
    dst[i] = Bf16 ? bf16_bits(v) : f16_bits(v);
  }
}
template <bool Bf16>
__global__ void unpack_half_kernel(float* dst, int64_t ldd, const uint16_t* src, int64_t rows,
                                   int64_t cols) {
  SY_GRID_STRIDE(i, rows * cols) {
    const uint16_t b = src[i];
    dst[(i / cols) * ldd + i % cols] =
        Bf16 ? __uint_as_float(static_cast<uint32_t>(b) << 16) : __half2float(__ushort_as_half(b));
  }
}
constexpr int kUploadBytes = 2048;  // kernel parameters: 4 KiB on every architecture
struct UploadChunk {
  unsigned char bytes[kUploadBytes];
};
__global__ void upload_kernel(unsigned char* dst, UploadChunk chunk, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = chunk.bytes[i];
}

// Fixed grid: every block sums a fixed set of elements (grid-stride, float per element squared,
// double per thread), the partials are then summed in order by one block: deterministic.
constexpr int kSumBlocks = 512;
__global__ void sum_squares_partial_kernel(double* partial, const float* x, int64_t n) {
  __shared__ double sh[32];
  double t = 0;
  SY_GRID_STRIDE(i, n) t += static_cast<double>(x[i]) * x[i];
  t = block_sum(t, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = t;
}
__global__ void sum_partials_kernel(double* result, const double* partial, int n) {
  __shared__ double sh[32];
  double t = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) t += partial[i];
  t = block_sum(t, sh);
  if (threadIdx.x == 0) *result = t;
}

template <int Round>  // 0: no compute copy, 1: bf16, 2: f16, 3: f32 copy
__global__ void adamw_kernel(float* p, const float* grads, float* m, float* v, int64_t n,
                             float grad_scale, float decay, float step, float beta1, float beta2,
                             float eps, float inv_sqrt_bc2, float* p_compute) {
  SY_GRID_STRIDE(i, n) {
    const float g = grads[i] * grad_scale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float pi = p[i] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    p[i] = pi;
    if constexpr (Round == 1) p_compute[i] = round_bf16(pi);
    if constexpr (Round == 2) p_compute[i] = round_f16(pi);
    if constexpr (Round == 3) p_compute[i] = pi;
  }
}

}  // namespace

void add(float* out, const float* a, const float* b, int64_t n, cudaStream_t s) {
  if (n > 0) add_kernel<<<blocks_for(n), kThreads, 0, s>>>(out, a, b, n);
}
void axpy(float* y, float alpha, const float* x, int64_t n, cudaStream_t s) {
  if (n > 0) axpy_kernel<<<blocks_for(n), kThreads, 0, s>>>(y, alpha, x, n);
}
void scale(float* x, float alpha, int64_t n, cudaStream_t s) {
  if (n > 0) scale_kernel<<<blocks_for(n), kThreads, 0, s>>>(x, alpha, n);
}
void scale_rows(float* C, int64_t ldc, int64_t rows, int64_t cols, float beta, cudaStream_t s) {
  if (rows > 0 && cols > 0)
    scale_rows_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(C, ldc, rows, cols, beta);
}
void add_bias(float* x, const float* bias, int64_t rows, int64_t cols, cudaStream_t s) {
  if (rows > 0 && cols > 0)
    add_bias_kernel<<<blocks_for(rows * cols), kThreads, 0, s>>>(x, bias, rows, cols);
}
void bias_backward(float* dbias, const float* dout, int64_t rows, int64_t cols, cudaStream_t s) {
  if (cols > 0) bias_backward_kernel<<<blocks_for(cols), kThreads, 0, s>>>(dbias, dout, rows, cols);
}
void round_rows(Half d, float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows,
                int64_t cols, cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  if (d == Half::none) {
    if (dst != src || ldd != lds)
      cudaMemcpy2DAsync(dst, ldd * sizeof(float), src, lds * sizeof(float), cols * sizeof(float),
                        rows, cudaMemcpyDeviceToDevice, s);
    return;
  }
  const unsigned blocks = blocks_for(rows * cols);
  if (d == Half::bf16) round_rows_kernel<true><<<blocks, kThreads, 0, s>>>(dst, ldd, src, lds, rows, cols);
  else round_rows_kernel<false><<<blocks, kThreads, 0, s>>>(dst, ldd, src, lds, rows, cols);
}
void pack_half(Half d, uint16_t* dst, const float* src, int64_t lds, int64_t rows, int64_t cols,
               cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  const unsigned blocks = blocks_for(rows * cols);
  if (d == Half::bf16) pack_half_kernel<true><<<blocks, kThreads, 0, s>>>(dst, src, lds, rows, cols);
  else pack_half_kernel<false><<<blocks, kThreads, 0, s>>>(dst, src, lds, rows, cols);
}
void unpack_half(Half d, float* dst, int64_t ldd, const uint16_t* src, int64_t rows, int64_t cols,
                 cudaStream_t s) {
  if (rows <= 0 || cols <= 0) return;
  const unsigned blocks = blocks_for(rows * cols);
  if (d == Half::bf16) unpack_half_kernel<true><<<blocks, kThreads, 0, s>>>(dst, ldd, src, rows, cols);
  else unpack_half_kernel<false><<<blocks, kThreads, 0, s>>>(dst, ldd, src, rows, cols);
}
void upload_small(void* dst, const void* host, size_t bytes, cudaStream_t s) {
  auto* d = static_cast<unsigned char*>(dst);
  const auto* h = static_cast<const unsigned char*>(host);
  for (size_t done = 0; done < bytes; done += kUploadBytes) {
    const int n = static_cast<int>(std::min<size_t>(kUploadBytes, bytes - done));
    UploadChunk chunk;
    std::memcpy(chunk.bytes, h + done, static_cast<size_t>(n));
    upload_kernel<<<1, kThreads, 0, s>>>(d + done, chunk, n);
  }
}
int64_t sum_squares_partials() { return kSumBlocks; }
void sum_squares(double* result, double* partial, const float* x, int64_t n, cudaStream_t s) {
  sum_squares_partial_kernel<<<kSumBlocks, kThreads, 0, s>>>(partial, x, n);
  sum_partials_kernel<<<1, kThreads, 0, s>>>(result, partial, kSumBlocks);
}
void adamw_update(float* p, const float* grads, float* m, float* v, int64_t n, float grad_scale,
                  float decay, float step, float beta1, float beta2, float eps,
                  float inv_sqrt_bc2, float* p_compute, Half compute, cudaStream_t s) {
  if (n <= 0) return;
  const unsigned blocks = blocks_for(n);
  const int mode = !p_compute ? 0 : compute == Half::bf16 ? 1 : compute == Half::f16 ? 2 : 3;
#define SY_ADAMW(M)                                                                              \
  adamw_kernel<M><<<blocks, kThreads, 0, s>>>(p, grads, m, v, n, grad_scale, decay, step, beta1, \
                                              beta2, eps, inv_sqrt_bc2, p_compute)
  switch (mode) {
    case 0: SY_ADAMW(0); break;
    case 1: SY_ADAMW(1); break;
    case 2: SY_ADAMW(2); break;
    default: SY_ADAMW(3); break;
  }
#undef SY_ADAMW
}

}  // namespace switchyard::core::cuda_kernels
