// scripts/isa_peak.cpp: this CPU core's instruction-level peak for fp32 FMA (vfmadd231ps zmm, 16
// multiply-adds) and for bf16 dot products (vdpbf16ps zmm, 32 multiply-adds), 12 independent
// accumulators each. Built and run by scripts/bench_precision.sh when the compiler and CPU have
// AVX512-BF16: it shows whether bf16 compute can be faster than fp32 here at all (without AMX).
#include <immintrin.h>

#include <chrono>
#include <cstdio>

int main() {
  const long iters = 200000000 / 12;
  __m512 fa[12], ba[12];
  for (int k = 0; k < 12; ++k) fa[k] = ba[k] = _mm512_setzero_ps();
  const __m512 x = _mm512_set1_ps(1e-9f), y = _mm512_set1_ps(1.0f);
  const __m512bh bx = (__m512bh)_mm512_set1_epi16(0x3f80), by = (__m512bh)_mm512_set1_epi16(0x3000);
  auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < iters; ++i)
#pragma GCC unroll 12
    for (int k = 0; k < 12; ++k) fa[k] = _mm512_fmadd_ps(x, y, fa[k]);
  const double s_fp32 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < iters; ++i)
#pragma GCC unroll 12
    for (int k = 0; k < 12; ++k) ba[k] = _mm512_dpbf16_ps(ba[k], bx, by);
  const double s_bf16 = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sink = 0;
  for (int k = 0; k < 12; ++k) sink += _mm512_reduce_add_ps(fa[k]) + _mm512_reduce_add_ps(ba[k]);
  const double n = static_cast<double>(iters) * 12.0;
  std::printf("{\"fp32_fma_gflops_per_core\": %.1f, \"bf16_dp_gflops_per_core\": %.1f, \"sink\": %g}\n",
              n * 32 / s_fp32 / 1e9, n * 64 / s_bf16 / 1e9, sink);
  return 0;
}
