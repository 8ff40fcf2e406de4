// core/cpu/simd.h: explicit AVX2 helpers shared by the CPU kernels (the build's baseline ISA is
// x86-64-v3, which has AVX2 and FMA). Each helper has a scalar twin in the kernels that use it,
// for builds without AVX2 and for loop tails.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SWITCHYARD_AVX2 1

namespace switchyard::core::simd {

// exp(x) for 8 floats: the same Cephes range reduction and degree-6 polynomial as the scalar
// exp_approx of the kernels (~2 ulp), 0 for x < -87.3365 (so exp(-inf) = 0), inputs above 88
// clamped to 88, NaN propagated. min/max/and instead of blends: about 17 uops per vector.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654475f);
  // max(lo, x) / min(hi, x) return x when x is NaN (the second operand), so NaN goes through.
  const __m256 xc = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(lo, x));
  const __m256 magic = _mm256_set1_ps(12582912.0f);  // 1.5 * 2^23: rounds to nearest integer
  const __m256 t = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), magic);
  const __m256 fn = _mm256_sub_ps(t, magic);
  const __m256i n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(0x4B400000));
  __m256 r = _mm256_fmadd_ps(fn, _mm256_set1_ps(-0.693359375f), xc);
  r = _mm256_fmadd_ps(fn, _mm256_set1_ps(2.12194440e-4f), r);
  const __m256 r2 = _mm256_mul_ps(r, r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0f));
  const __m256 pow2n = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
  const __m256 res = _mm256_mul_ps(p, pow2n);
  return _mm256_and_ps(res, _mm256_cmp_ps(x, lo, _CMP_NLT_UQ));  // x < lo: 0
}

// Sum of the 8 lanes, as a tree: (l0+l4) + (l2+l6) + ((l1+l5) + (l3+l7)).
inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace switchyard::core::simd

#endif
