// core/cpu/moe_kernels.cpp: CPU MoE kernels: SwiGLU, sigmoid gate, router softmax/top-k and its
// backward, routing plan (counting sort), dispatch/combine permutations, and the token exchange's
// pack/sum steps (gather/scatter rows, the scatter-add summation, the gate dot/scale).
// Every parallel loop is over rows (tokens or activation rows): each iteration writes only its own
// rows, so the loops are race-free; dispatch/combine backward iterate over tokens, never slots.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/router_row.h"
#include "core/cpu/scalar_math.h"
#include "core/cpu/simd.h"
#include "core/error.h"

namespace switchyard::core {

namespace {

// Below this many elements of work a loop runs on one thread (fork/join costs more than it saves).
constexpr int64_t kParallelMin = 1 << 14;

inline float sigmoidf(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

// Row kernels: separate functions with restrict pointers so the compiler vectorises them (inside
// an OpenMP-outlined body the pointers come from a shared struct and the loop is not vectorised).
// With AVX2 the body is explicit (exp8 from core/cpu/simd.h, no blends): the scalar loop finishes
// the last I % 8 columns.
void swiglu_row(float* __restrict o, const float* __restrict g, const float* __restrict u,
                int64_t I) {
  int64_t i = 0;
#ifdef SWITCHYARD_AVX2
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (; i + 8 <= I; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, simd::exp8(_mm256_sub_ps(zero, gi))));
    _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_mul_ps(gi, s), _mm256_loadu_ps(u + i)));
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < I; ++j) {
    const float s = sigmoidf(g[j]);
    o[j] = g[j] * s * u[j];
  }
}

// d silu(g)/dg = s * (1 + g * (1 - s)), s = sigmoid(g)
void swiglu_backward_row(float* __restrict dg, float* __restrict du, const float* __restrict d,
                         const float* __restrict g, const float* __restrict u, int64_t I) {
  int64_t i = 0;
#ifdef SWITCHYARD_AVX2
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (; i + 8 <= I; i += 8) {
    const __m256 gi = _mm256_loadu_ps(g + i), di = _mm256_loadu_ps(d + i);
    const __m256 s = _mm256_div_ps(one, _mm256_add_ps(one, simd::exp8(_mm256_sub_ps(zero, gi))));
    _mm256_storeu_ps(du + i, _mm256_mul_ps(_mm256_mul_ps(di, gi), s));
    // d * u * s * (1 + g * (1 - s))
    const __m256 t = _mm256_add_ps(one, _mm256_mul_ps(gi, _mm256_sub_ps(one, s)));
    _mm256_storeu_ps(dg + i,
                     _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(di, _mm256_loadu_ps(u + i)), s), t));
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < I; ++j) {
    const float s = sigmoidf(g[j]);
    du[j] = d[j] * g[j] * s;
    dg[j] = d[j] * u[j] * s * (1.0f + g[j] * (1.0f - s));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// SwiGLU: h [rows, 2I] = gate | up, out [rows, I] = silu(gate) * up
// ---------------------------------------------------------------------------------------------

void CpuBackend::swiglu_forward(float* out, const float* h, int64_t rows, int64_t I) {
#pragma omp parallel for schedule(static) if (rows * I >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) swiglu_row(out + r * I, h + r * 2 * I, h + r * 2 * I + I, I);
}

void CpuBackend::swiglu_backward(float* dh, const float* dout, const float* h, int64_t rows,
                                 int64_t I) {
#pragma omp parallel for schedule(static) if (rows * I >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r)
    swiglu_backward_row(dh + r * 2 * I, dh + r * 2 * I + I, dout + r * I, h + r * 2 * I,
                        h + r * 2 * I + I, I);
}

// ---------------------------------------------------------------------------------------------
// sigmoid gate (shared expert): out[r,:] += sigmoid(logit[r]) * y[r,:]
// ---------------------------------------------------------------------------------------------

void CpuBackend::sigmoid_gate_forward(float* out, const float* logit, const float* y, int64_t rows,
                                      int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const float s = 1.0f / (1.0f + std::exp(-logit[r]));
    const float* yr = y + r * C;
    float* o = out + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) o[c] += s * yr[c];
  }
}

void CpuBackend::sigmoid_gate_backward(float* dy, float* dlogit, const float* dout,
                                       const float* logit, const float* y, int64_t rows,
                                       int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const float s = 1.0f / (1.0f + std::exp(-logit[r]));
    const float* d = dout + r * C;
    const float* yr = y + r * C;
    float* dyr = dy + r * C;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < C; ++c) {
      dyr[c] = s * d[c];
      dot += d[c] * yr[c];
    }
    dlogit[r] = s * (1.0f - s) * dot;
  }
}

// ---------------------------------------------------------------------------------------------
// router: scores (fp32) -> top-k (descending, ties to the lower index) -> gates (core/router_row.h)
// ---------------------------------------------------------------------------------------------

void CpuBackend::router_topk(float* probs, float* lse, int32_t* idx, float* gates,
                             const float* logits, int64_t N, int64_t E, int64_t K,
                             const RouterOptions& opt) {
  SY_CHECK(K >= 1 && K <= E, "router_topk: K={} must be in [1, E={}]", K, E);
  const bool sig = opt.scoring == RouterScoring::sigmoid;
#pragma omp parallel for schedule(static) if (N * E >= kParallelMin)
  for (int64_t t = 0; t < N; ++t)
    router_row::topk(probs + t * E, lse + t, idx + t * K, gates + t * K, logits + t * E, E, K, sig,
                     opt.renormalize, opt.bias, opt.top_p);
}

void CpuBackend::router_backward(float* dlogits, const float* dgates, const float* logits,
                                 const float* probs, const float* lse, const int32_t* idx,
                                 const float* gates, const float* dprobs_all, float z_coef,
                                 int64_t N, int64_t E, int64_t K, const RouterOptions& opt) {
  const bool sig = opt.scoring == RouterScoring::sigmoid;
  SY_CHECK(!sig || logits, "router_backward: sigmoid scoring needs the logits");
#pragma omp parallel for schedule(static) if (N * E >= kParallelMin)
  for (int64_t t = 0; t < N; ++t)
    router_row::backward(dlogits + t * E, dgates + t * K, sig ? logits + t * E : nullptr,
                         probs + t * E, lse[t], idx + t * K, gates + t * K, dprobs_all, z_coef, E,
                         K, sig, opt.renormalize);
}

// ---------------------------------------------------------------------------------------------
// routing plan: counting sort of the slots by expert, stable in slot (= token) order
// ---------------------------------------------------------------------------------------------

void CpuBackend::route_plan(int32_t* pos, int32_t* expert_offsets, const int32_t* idx, int64_t N,
                            int64_t E, int64_t K) {
  const int64_t S = N * K;
  SY_CHECK(S <= INT32_MAX, "route_plan: {} slots overflow int32", S);
  std::vector<int32_t> next(static_cast<size_t>(E) + 1, 0);
  for (int64_t s = 0; s < S; ++s) {
    const int32_t e = idx[s];
    if (e < 0) continue;
    SY_CHECK(e < E, "route_plan: slot {} has expert {} >= E={}", s, e, E);
    ++next[static_cast<size_t>(e) + 1];
  }
  for (int64_t e = 0; e < E; ++e) next[e + 1] += next[e];
  std::memcpy(expert_offsets, next.data(), sizeof(int32_t) * static_cast<size_t>(E + 1));
  for (int64_t s = 0; s < S; ++s) {
    const int32_t e = idx[s];
    pos[s] = e < 0 ? -1 : next[static_cast<size_t>(e)]++;
  }
}

// ---------------------------------------------------------------------------------------------
// dispatch / combine
// ---------------------------------------------------------------------------------------------

void CpuBackend::dispatch_forward(float* xp, const float* x, const int32_t* pos, int64_t N,
                                  int64_t K, int64_t C) {
  // Each slot writes its own row of xp (pos is injective on kept slots): race-free.
#pragma omp parallel for schedule(static) if (N * K * C >= kParallelMin)
  for (int64_t s = 0; s < N * K; ++s) {
    const int32_t p = pos[s];
    if (p < 0) continue;
    std::memcpy(xp + static_cast<int64_t>(p) * C, x + (s / K) * C, sizeof(float) * C);
  }
}

namespace {

// out[t] = sum over the kept slots k of token t of (gates[t,k] *) rows[pos[t*K+k]], summed in k
// order; 0 for a token without kept slots. Dispatch backward (Gated = false: plain sum) and
// combine forward (Gated = true) are this one kernel.
template <bool Gated>
void sum_slot_rows(float* out, const float* rows, const int32_t* pos, const float* gates, int64_t N,
                   int64_t K, int64_t C) {
#pragma omp parallel for schedule(static) if (N * K * C >= kParallelMin)
  for (int64_t t = 0; t < N; ++t) {
    float* o = out + t * C;
    bool first = true;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t p = pos[t * K + k];
      if (p < 0) continue;
      const float* src = rows + static_cast<int64_t>(p) * C;
      if constexpr (Gated) {
        const float g = gates[t * K + k];
        if (first) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = g * src[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += g * src[c];
        }
      } else {
        if (first) {
          std::memcpy(o, src, sizeof(float) * C);
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += src[c];
        }
      }
      first = false;
    }
    if (first) std::memset(o, 0, sizeof(float) * C);
  }
}

}  // namespace

void CpuBackend::dispatch_backward(float* dx, const float* dxp, const int32_t* pos, int64_t N,
                                   int64_t K, int64_t C) {
  sum_slot_rows<false>(dx, dxp, pos, nullptr, N, K, C);
}

void CpuBackend::combine_forward(float* out, const float* y, const int32_t* pos, const float* gates,
                                 int64_t N, int64_t K, int64_t C) {
  sum_slot_rows<true>(out, y, pos, gates, N, K, C);
}

void CpuBackend::combine_backward(float* dy, float* dgates, const float* dout, const float* y,
                                  const int32_t* pos, const float* gates, int64_t N, int64_t K,
                                  int64_t C) {
#pragma omp parallel for schedule(static) if (N * K * C >= kParallelMin)
  for (int64_t t = 0; t < N; ++t) {
    const float* d = dout + t * C;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t s = t * K + k;
      const int32_t p = pos[s];
      if (p < 0) {
        dgates[s] = 0.f;
        continue;
      }
      const float g = gates[s];
      const float* yr = y + static_cast<int64_t>(p) * C;
      float* dyr = dy + static_cast<int64_t>(p) * C;
      float dot = 0.f;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < C; ++c) {
        dyr[c] = g * d[c];
        dot += d[c] * yr[c];
      }
      dgates[s] = dot;
    }
  }
}

void CpuBackend::gather_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) {
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
#pragma omp parallel for schedule(static) if (n * row_bytes >= (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i)
    if (index[i] >= 0) std::memcpy(d + i * row_bytes, s + index[i] * row_bytes, static_cast<size_t>(row_bytes));
}

void CpuBackend::scatter_rows(void* dst, const void* src, const int64_t* index, int64_t n, int64_t row_bytes) {
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
#pragma omp parallel for schedule(static) if (n * row_bytes >= (int64_t{1} << 20))
  for (int64_t i = 0; i < n; ++i) std::memcpy(d + index[i] * row_bytes, s + i * row_bytes, static_cast<size_t>(row_bytes));
}

// Threads split the columns, never the rows: every element still sees its additions in index
// order, so the result does not depend on the thread count.
void CpuBackend::scatter_add_rows(float* dst, const int64_t* dst_index, const float* src, const int64_t* src_index,
                                  const float* w, const uint8_t* first, int64_t n, int64_t C) {
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (C + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n * C >= (int64_t{1} << 18) && blocks > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t c0 = b * kBlock, c1 = std::min(C, c0 + kBlock);
    for (int64_t i = 0; i < n; ++i) {
      float* d = dst + dst_index[i] * C;
      const float* s = src + src_index[i] * C;
      const bool write = first != nullptr && first[i] != 0;
      if (w == nullptr) {
        if (write) {
          for (int64_t c = c0; c < c1; ++c) d[c] = s[c];
        } else {
          for (int64_t c = c0; c < c1; ++c) d[c] += s[c];
        }
      } else {
        const float g = w[i];
        if (write) {
          for (int64_t c = c0; c < c1; ++c) d[c] = g * s[c];
        } else {
          for (int64_t c = c0; c < c1; ++c) d[c] += g * s[c];
        }
      }
    }
  }
}

// Rows are independent (each dot runs over its own row in column order): any thread count gives
// the same values.
void CpuBackend::gate_dot_scale(float* dy, float* dgate, const float* y, const float* gate, int64_t rows,
                                int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C >= (int64_t{1} << 18))
  for (int64_t r = 0; r < rows; ++r) {
    float* d = dy + r * C;
    const float* yr = y + r * C;
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(d[c]) * static_cast<double>(yr[c]);
    dgate[r] = static_cast<float>(dot);
    const float g = gate[r];
    for (int64_t c = 0; c < C; ++c) d[c] *= g;
  }
}

}  // namespace switchyard::core
