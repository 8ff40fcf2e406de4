// core/cpu/rounding.cpp: rounding fp32 values to bf16 or fp16 precision, kept in fp32 (round_to and
// the operand/result rounding of CpuBackend::gemm). Bit for bit the scalar conversions of
// core/half.h, round trip f32 -> 16 bit -> f32: nearest, ties to even; fp16 overflow
// (|x| >= 65520) gives +-inf, fp16 subnormals exact; bf16 overflow follows RNE (to +-inf); NaN
// stays NaN (quiet, with the payload bits that fit). AVX2 + F16C (x86-64-v3) with the scalar
// conversions for tails and for builds without them. Memory-bound: one read and one write per
// element, split across the backend's threads for large regions.
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "core/cpu/cpu_backend.h"
#include "core/half.h"

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#define SWITCHYARD_ROUND_AVX2 1
#endif

namespace switchyard::core {

namespace {

// dst[i] = bf16(src[i]) as fp32 for i < n; dst may equal src.
void round_span_bf16(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#ifdef SWITCHYARD_ROUND_AVX2
  // The integer RNE of f32_to_bf16: x + 0x7fff + ((x >> 16) & 1), low 16 bits cleared (a carry
  // into the exponent is the right result, up to inf). NaN: the high half with the quiet bit set.
  const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1),
                high = _mm256_set1_epi32(static_cast<int>(0xffff0000u)),
                quiet = _mm256_set1_epi32(0x00400000);
  auto round8 = [&](__m256i x) {
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), one);
    const __m256i r = _mm256_add_epi32(_mm256_add_epi32(x, bias), lsb);
    // Unordered with itself: NaN only (DAZ reads denormals as zero, never as NaN).
    const __m256i nan = _mm256_castps_si256(
        _mm256_cmp_ps(_mm256_castsi256_ps(x), _mm256_castsi256_ps(x), _CMP_UNORD_Q));
    return _mm256_and_si256(_mm256_blendv_epi8(r, _mm256_or_si256(x, quiet), nan), high);
  };
  for (; i + 16 <= n; i += 16) {
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 8));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), round8(x0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 8), round8(x1));
  }
  for (; i + 8 <= n; i += 8) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), round8(x));
  }
#endif
  for (; i < n; ++i) dst[i] = bf16_to_f32(f32_to_bf16(src[i]));
}

// dst[i] = fp16(src[i]) as fp32 for i < n; dst may equal src.
void round_span_f16(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#ifdef SWITCHYARD_ROUND_AVX2
  // F16C: VCVTPS2PH rounds to nearest even (immediate, not MXCSR), gives +-inf on overflow,
  // produces fp16 subnormals whatever MXCSR.FTZ says and quiets NaNs keeping the top payload
  // bits, as f32_to_f16 does; fp32 denormal inputs (zero under DAZ or not) become +-0 either way.
  // VCVTPH2PS is exact, fp16 subnormals become fp32 normals. The unit tests check every class.
  constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (; i + 16 <= n; i += 16) {
    const __m128i h0 = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), kRound);
    const __m128i h1 = _mm256_cvtps_ph(_mm256_loadu_ps(src + i + 8), kRound);
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h0));
    _mm256_storeu_ps(dst + i + 8, _mm256_cvtph_ps(h1));
  }
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(src + i), kRound)));
#endif
  for (; i < n; ++i) dst[i] = f16_to_f32(f32_to_f16(src[i]));
}

}  // namespace

void CpuBackend::round_rows(Dtype d, float* dst, int64_t ldd, const float* src, int64_t lds,
                            int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  if (d == Dtype::f32) {
    if (dst == src && ldd == lds) return;
    for (int64_t r = 0; r < rows; ++r)
      std::memmove(dst + r * ldd, src + r * lds, static_cast<size_t>(cols) * sizeof(float));
    return;
  }
  void (*span)(float*, const float*, int64_t) =
      d == Dtype::bf16 ? round_span_bf16 : round_span_f16;
  // Work items of about kChunk elements: a piece of one row when rows are long, a block of whole
  // rows when they are short. Below kSerial elements the threads cost more than they save.
  constexpr int64_t kChunk = int64_t{1} << 14, kSerial = int64_t{1} << 15;
  const bool parallel = rows * cols >= kSerial && threads_ > 1 && !omp_in_parallel();
  if (cols >= kChunk) {
    const int64_t per_row = (cols + kChunk - 1) / kChunk, items = rows * per_row;
#pragma omp parallel for schedule(static) num_threads(threads_) if (parallel)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t r = it / per_row, c = (it % per_row) * kChunk;
      span(dst + r * ldd + c, src + r * lds + c, std::min(kChunk, cols - c));
    }
  } else {
    const int64_t rows_per = std::max<int64_t>(1, kChunk / cols),
                  items = (rows + rows_per - 1) / rows_per;
#pragma omp parallel for schedule(static) num_threads(threads_) if (parallel)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t r_end = std::min(rows, (it + 1) * rows_per);
      if (ldd == cols && lds == cols) {  // contiguous block: one span
        const int64_t r0 = it * rows_per;
        span(dst + r0 * cols, src + r0 * cols, (r_end - r0) * cols);
      } else {
        for (int64_t r = it * rows_per; r < r_end; ++r) span(dst + r * ldd, src + r * lds, cols);
      }
    }
  }
}

void CpuBackend::round_to(Dtype d, float* x, int64_t n) {
  if (d == Dtype::f32 || n <= 0) return;
  round_rows(d, x, n, x, n, 1, n);
}

}  // namespace switchyard::core
