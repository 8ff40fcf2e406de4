// core/cpu/scalar_math.h: scalar math the CPU kernels share, written so GCC vectorises the loops
// that call it (no libm calls): fused multiply-add and a Cephes-style exp. core/cpu/simd.h has the
// explicit 8-wide twin of exp_approx (simd::exp8), with the same constants.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace switchyard::core {

// a*b + c, fused where the target has FMA.
inline float fmadd(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// exp(x) for float: range reduction x = n ln2 + r and a degree-6 polynomial, ~2 ulp. Inputs are
// clamped to [-87.3, 88]; below -87.3 the result is 0 (so exp(-inf) = 0); NaN propagates.
inline float exp_approx(float x) {
  constexpr float kHi = 88.0f, kLo = -87.33654475f;
  const float xc = std::min(std::max(x, kLo), kHi);
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23: rounds to nearest integer
  const float t = fmadd(xc, 1.44269504088896341f, kMagic);
  const float fn = t - kMagic;
  const int32_t n = std::bit_cast<int32_t>(t) - 0x4B400000;
  float r = fmadd(fn, -0.693359375f, xc);
  r = fmadd(fn, 2.12194440e-4f, r);
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = fmadd(p, r, 1.3981999507e-3f);
  p = fmadd(p, r, 8.3334519073e-3f);
  p = fmadd(p, r, 4.1665795894e-2f);
  p = fmadd(p, r, 1.6666665459e-1f);
  p = fmadd(p, r, 5.0000001201e-1f);
  p = fmadd(p, r2, r) + 1.0f;
  const float res = p * std::bit_cast<float>((n + 127) << 23);
  return x < kLo ? 0.0f : res;
}

}  // namespace switchyard::core
