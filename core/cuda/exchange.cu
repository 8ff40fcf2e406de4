// core/cuda/exchange.cu: the token exchange's pack and sum steps (Backend::gather_rows,
// scatter_rows, scatter_add_rows, gate_dot_scale), so that exchanged tokens stay on the device.
// Index arrays are device memory, as every pointer of the backend table.
#include "core/cuda/common.cuh"
#include "core/cuda/kernels.h"

namespace switchyard::core::cuda_kernels {

namespace {

// Row copies in 4-byte words when every row is word-aligned, else bytes; one block per row.
template <class W>
__global__ void copy_rows_kernel(W* dst, const W* src, const int64_t* index, int64_t n, int64_t words,
                                 bool scatter) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t j = index[i];
    if (j < 0) continue;
    W* d = dst + (scatter ? j : i) * words;
    const W* s = src + (scatter ? i : j) * words;
    for (int64_t w = threadIdx.x; w < words; w += blockDim.x) d[w] = s[w];
  }
}

void copy_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes, bool scatter,
               cudaStream_t s) {
  if (n <= 0 || row_bytes <= 0) return;
  if (row_bytes % 4 == 0 && reinterpret_cast<uintptr_t>(dst) % 4 == 0 && reinterpret_cast<uintptr_t>(src) % 4 == 0)
    copy_rows_kernel<<<row_blocks(n), kThreads, 0, s>>>(static_cast<uint32_t*>(dst), static_cast<const uint32_t*>(src),
                                                         index, n, row_bytes / 4, scatter);
  else
    copy_rows_kernel<<<row_blocks(n), kThreads, 0, s>>>(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src),
                                                         index, n, row_bytes, scatter);
}

// One thread per column walks i = 0..n-1 in order, so every element sums its terms in index order
// (the contract), deterministically. Parallel over columns only: a first version.
__global__ void scatter_add_rows_kernel(float* dst, const int64_t* dst_index, const float* src,
                                        const int64_t* src_index, const float* w, const uint8_t* first,
                                        int64_t n, int64_t C) {
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < C; c += int64_t{blockDim.x} * gridDim.x)
    for (int64_t i = 0; i < n; ++i) {
      const float v = src[src_index[i] * C + c];
      const float term = w ? w[i] * v : v;
      float& d = dst[dst_index[i] * C + c];
      d = first && first[i] ? term : d + term;
    }
}

// One block per row: dgate = dot(dy, y) in double, then dy *= gate.
__global__ void gate_dot_scale_kernel(float* dy, float* dgate, const float* y, const float* gate, int64_t rows,
                                      int64_t C) {
  __shared__ double shared[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    double acc = 0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
      acc += static_cast<double>(dy[r * C + c]) * static_cast<double>(y[r * C + c]);
    acc = block_sum(acc, shared);  // every thread has read its dy before any scales it
    if (threadIdx.x == 0) dgate[r] = static_cast<float>(acc);
    const float g = gate[r];
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dy[r * C + c] *= g;
  }
}

}  // namespace

void gather_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes, cudaStream_t s) {
  copy_rows(dst, src, index, n, row_bytes, /*scatter=*/false, s);
}
void scatter_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes, cudaStream_t s) {
  copy_rows(dst, src, index, n, row_bytes, /*scatter=*/true, s);
}
void scatter_add_rows(float* dst, const int64_t* dst_index, const float* src, const int64_t* src_index,
                      const float* w, const uint8_t* first, int64_t n, int64_t C, cudaStream_t s) {
  if (n > 0 && C > 0)
    scatter_add_rows_kernel<<<blocks_for(C), kThreads, 0, s>>>(dst, dst_index, src, src_index, w, first, n, C);
}
void gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate, int64_t rows, int64_t C,
                    cudaStream_t s) {
  if (rows > 0) gate_dot_scale_kernel<<<row_blocks(rows), kThreads, 0, s>>>(dy, dgate, y, gate, rows, C);
}

}  // namespace switchyard::core::cuda_kernels
