// core/cuda/common.cuh: device helpers the .cu files share: launch sizes, block reductions, the
// bf16/fp16 rounding of core/half.h on the device.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace switchyard::core::cuda_kernels {

constexpr int kThreads = 256;  // threads of a 1-D block
constexpr int64_t kMaxBlocks = 65535 * 16;  // grid-stride loops cover the rest

// Blocks for one block per row (grid-stride over rows beyond the grid's limit).
inline unsigned row_blocks(int64_t rows) {
  constexpr int64_t kRowBlocks = 65535;
  return static_cast<unsigned>(rows < kRowBlocks ? (rows > 0 ? rows : 1) : kRowBlocks);
}

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < kMaxBlocks ? (b > 0 ? b : 1) : kMaxBlocks);
}

// bf16 round to nearest even, as f32_to_bf16 of core/half.h (NaN: quiet, top payload kept).
__device__ __forceinline__ uint16_t bf16_bits(float f) {
  const uint32_t x = __float_as_uint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
__device__ __forceinline__ float round_bf16(float f) {
  return __uint_as_float(static_cast<uint32_t>(bf16_bits(f)) << 16);
}
// fp16: the hardware conversion rounds to nearest even, overflows (|x| >= 65520) to +-inf and
// produces subnormals, like f32_to_f16 (a NaN may come back with another payload: still NaN).
__device__ __forceinline__ uint16_t f16_bits(float f) {
  return __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ float round_f16(float f) { return __half2float(__float2half_rn(f)); }

// Sum of v over the block (every thread gets it). blockDim.x a multiple of 32, <= 1024; every
// thread of the block must call it. `shared` holds 32 values.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // shared may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T t = lane < warps ? shared[lane] : T(0);
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}
__device__ __forceinline__ float block_max(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = lane < warps ? shared[lane] : -INFINITY;
  for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffffu, t, o));
  return t;
}

}  // namespace switchyard::core::cuda_kernels
