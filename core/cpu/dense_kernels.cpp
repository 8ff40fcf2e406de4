// core/cpu/dense_kernels.cpp: CPU embedding, RMSNorm, RoPE and cross-entropy kernels.
// OpenMP over rows (or over column chunks where rows would race), simd inner loops. Row
// reductions accumulate in 16 float lanes flushed into a double every 1024 elements; per-thread
// partial sums are reduced in thread order, so results are deterministic for a thread count.
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/scalar_math.h"
#include "core/error.h"

namespace switchyard::core {
namespace {



// sum_{j<n} f(j): 16 float lanes (vectorised), flushed into a double every 1024 elements. GCC's
// `omp simd reduction` on a double fed by floats does not vectorise well; this does.
template <class F>
inline double lane_sum(int64_t n, F f) {
  constexpr int64_t L = 16, kChunk = 1024;
  const int64_t nv = n - n % L;
  double s = 0;
  int64_t j = 0;
  while (j < nv) {
    float acc[L] = {};
    const int64_t end = std::min(nv, j + kChunk);
    for (; j < end; j += L)
      for (int64_t l = 0; l < L; ++l) acc[l] += f(j + l);
    for (int64_t l = 0; l < L; ++l) s += acc[l];
  }
  for (; j < n; ++j) s += f(j);
  return s;
}

// max_{j<n} x[j] (16 lanes; faster than GCC's `omp simd reduction(max)`).
inline float lane_max(const float* x, int64_t n) {
  constexpr int64_t L = 16;
  const int64_t nv = n - n % L;
  float acc[L];
  for (int64_t l = 0; l < L; ++l) acc[l] = -INFINITY;
  for (int64_t j = 0; j < nv; j += L)
    for (int64_t l = 0; l < L; ++l) acc[l] = std::max(acc[l], x[j + l]);
  float m = -INFINITY;
  for (int64_t l = 0; l < L; ++l) m = std::max(m, acc[l]);
  for (int64_t j = nv; j < n; ++j) m = std::max(m, x[j]);
  return m;
}

// sum_j exp(x[j] - m)
inline double row_sum_exp(const float* x, int64_t n, float m) {
  return lane_sum(n, [&](int64_t j) { return exp_approx(x[j] - m); });
}

// cos/sin of t * theta^(-2i/HD) for t < T, i < HD/2, angles in double. Cached per calling thread
// (the table is filled before the parallel region and only read inside it); rebuilt when the key
// changes, so several backends or shapes are fine.
struct RopeTable {
  int64_t T = -1, HD = -1;
  float theta = 0;
  std::vector<float> cos, sin;  // [T, HD/2]
};

const RopeTable& rope_table(int64_t T, int64_t HD, float theta) {
  thread_local RopeTable tab;
  if (tab.T >= T && tab.HD == HD && tab.theta == theta) return tab;  // a longer table's rows are the same
  const int64_t half = HD / 2;
  tab.cos.resize(static_cast<size_t>(T * half));
  tab.sin.resize(static_cast<size_t>(T * half));
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[i] = std::pow(static_cast<double>(theta), -2.0 * static_cast<double>(i) / HD);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(t) * inv_freq[i];
      tab.cos[t * half + i] = static_cast<float>(std::cos(a));
      tab.sin[t * half + i] = static_cast<float>(std::sin(a));
    }
  tab.T = T;
  tab.HD = HD;
  tab.theta = theta;
  return tab;
}

// Rotates the q and k heads of every row of qkv by +angle (sign = 1) or -angle (sign = -1); the
// position of row r is pos0 + r % T, less its document's start with packed rows.
void rope_apply(float* qkv, const AttentionShape& s, float theta, float sign) {
  SY_CHECK(s.HD % 2 == 0, "rope needs an even head dim, got {}", s.HD);
  const int64_t N = s.B * s.T;
  if (N == 0 || s.HD == 0) return;
  const RopeTable& tab = rope_table(s.pos0 + s.T, s.HD, theta);
  const int64_t half = s.HD / 2, W = s.qkv_width(), heads = s.NH + s.NKV, T = s.T, HD = s.HD;
  const float* cos_tab = tab.cos.data();
  const float* sin_tab = tab.sin.data();
  const int32_t* doc = s.doc_start;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; ++r) {
    const int64_t pos = s.pos0 + r % T - (doc ? doc[r] : 0);
    const float* c = cos_tab + pos * half;
    const float* sn = sin_tab + pos * half;
    float* row = qkv + r * W;
    for (int64_t h = 0; h < heads; ++h) {
      float* x1 = row + h * HD;
      float* x2 = x1 + half;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i], b = x2[i], si = sign * sn[i];
        x1[i] = a * c[i] - b * si;
        x2[i] = b * c[i] + a * si;
      }
    }
  }
}

}  // namespace

// ---------------------------------------------------------------- embedding

void CpuBackend::embedding_forward(float* out, const int32_t* tokens, const float* wte, int64_t N,
                                   int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    std::memcpy(out + n * C, wte + static_cast<int64_t>(tokens[n]) * C,
                static_cast<size_t>(C) * sizeof(float));
}

void CpuBackend::embedding_backward(float* dwte, const float* dout, const int32_t* tokens,
                                    int64_t N, int64_t C) {
  // Tokens may repeat, so rows of dwte would race. Each thread owns a chunk of columns (a
  // multiple of 16 floats, i.e. whole cache lines when C is) and walks every token in order:
  // race-free and bitwise identical to the serial loop.
  if (N == 0 || C == 0) return;
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int64_t per = ((C + nt - 1) / nt + 15) / 16 * 16;
    const int64_t c0 = std::min(C, id * per), c1 = std::min(C, c0 + per);
    if (c0 < c1) {
      for (int64_t n = 0; n < N; ++n) {
        float* dst = dwte + static_cast<int64_t>(tokens[n]) * C;
        const float* src = dout + n * C;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
      }
    }
  }
}

// ---------------------------------------------------------------- RMSNorm

namespace {

// One row of RMSNorm: o = x * rstd * w; returns rstd.
inline float rmsnorm_row(float* __restrict o, const float* __restrict xr,
                         const float* __restrict w, int64_t C, float eps) {
  const double ss = lane_sum(C, [&](int64_t c) { return xr[c] * xr[c]; });
  const float rs = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(C) + eps));
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) o[c] = (xr[c] * rs) * w[c];
  return rs;
}

inline void add_row(float* s, const float* a, const float* b, int64_t C) {  // s may alias a or b
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) s[c] = a[c] + b[c];
}

// dx_k (= or +=) r w_k g_k - x_k r^3 / C * sum_c g_c w_c x_c for one row; pf[c] += g_c x_c r.
template <bool Accumulate>
inline void rmsnorm_backward_row(float* __restrict d, float* __restrict pf,
                                 const float* __restrict g, const float* __restrict xr,
                                 const float* __restrict w, float rs, int64_t C) {
  const double dot = lane_sum(C, [&](int64_t c) { return g[c] * w[c] * xr[c]; });
  const float k = static_cast<float>(dot * rs * rs * rs / static_cast<double>(C));
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float v = rs * (w[c] * g[c]) - k * xr[c];
    if constexpr (Accumulate) d[c] += v;
    else d[c] = v;
    pf[c] += g[c] * (xr[c] * rs);
  }
}

// y_c = w_c x_c r, r = (mean(x^2) + eps)^-1/2:
//   dx_k = r w_k g_k - x_k r^3 / C * sum_c g_c w_c x_c;  dw_c += sum_rows g_c x_c r.
// dw: per-thread float partials flushed into double partials every kFlush rows, then reduced
// in thread order (deterministic for a given thread count).
template <bool Accumulate>
void rmsnorm_backward_impl(float* dx, float* dw, const float* dout, const float* x,
                           const float* w, const float* rstd, int64_t N, int64_t C) {
  if (N == 0 || C == 0) return;
  constexpr int64_t kFlush = 64;
  const int64_t max_threads = omp_get_max_threads();
  std::vector<double> part(static_cast<size_t>(max_threads * C), 0.0);
  std::vector<float> fpart(static_cast<size_t>(max_threads * C), 0.0f);
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
    double* pd = part.data() + id * C;
    float* pf = fpart.data() + id * C;
    int64_t pending = 0;
    auto flush = [&] {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        pd[c] += pf[c];
        pf[c] = 0.0f;
      }
      pending = 0;
    };
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N; ++r) {
      rmsnorm_backward_row<Accumulate>(dx + r * C, pf, dout + r * C, x + r * C, w, rstd[r], C);
      if (++pending == kFlush) flush();
    }
    flush();
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t t = 0; t < nt; ++t) s += part[t * C + c];
      dw[c] += static_cast<float>(s);
    }
  }
}

}  // namespace

void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  // large copies (weights to compute weights) split across the threads like zero()
  constexpr size_t kParallelBytes = size_t{1} << 20;
  if (bytes < kParallelBytes || threads_ <= 1 || omp_in_parallel()) {
    std::memcpy(dst, src, bytes);
    return;
  }
  const size_t chunk = (bytes / static_cast<size_t>(threads_) + 4095) / 4096 * 4096;
#pragma omp parallel for schedule(static) num_threads(threads_)
  for (int t = 0; t < threads_; ++t) {
    const size_t b = std::min(bytes, static_cast<size_t>(t) * chunk), e = std::min(bytes, b + chunk);
    if (b < e) std::memcpy(static_cast<char*>(dst) + b, static_cast<const char*>(src) + b, e - b);
  }
}

void CpuBackend::rmsnorm_forward(float* out, float* rstd, const float* x, const float* w,
                                 int64_t N, int64_t C, float eps) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; ++r) rstd[r] = rmsnorm_row(out + r * C, x + r * C, w, C, eps);
}

void CpuBackend::add_rmsnorm_forward(float* sum, float* out, float* rstd, const float* a,
                                     const float* b, const float* w, int64_t N, int64_t C,
                                     float eps) {
  // Row by row: the row of sum is still in L1 when it is normalised.
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; ++r) {
    add_row(sum + r * C, a + r * C, b + r * C, C);
    rstd[r] = rmsnorm_row(out + r * C, sum + r * C, w, C, eps);
  }
}

void CpuBackend::rmsnorm_backward(float* dx, float* dw, const float* dout, const float* x,
                                  const float* w, const float* rstd, int64_t N, int64_t C) {
  rmsnorm_backward_impl<false>(dx, dw, dout, x, w, rstd, N, C);
}

void CpuBackend::rmsnorm_backward_accumulate(float* dx, float* dw, const float* dout,
                                             const float* x, const float* w, const float* rstd,
                                             int64_t N, int64_t C) {
  rmsnorm_backward_impl<true>(dx, dw, dout, x, w, rstd, N, C);
}

// ---------------------------------------------------------------- RoPE

void CpuBackend::rope_forward(float* qkv, const AttentionShape& s, float theta) {
  rope_apply(qkv, s, theta, 1.0f);
}

void CpuBackend::rope_backward(float* dqkv, const AttentionShape& s, float theta) {
  rope_apply(dqkv, s, theta, -1.0f);  // the transpose of a rotation is the inverse rotation
}

// ---------------------------------------------------------------- cross-entropy

// Every target is below V (a negative target marks an ignored row).
static void check_targets(const int32_t* targets, int64_t N, int64_t V) {
  for (int64_t i = 0; i < N; ++i)
    SY_CHECK(targets[i] < V, "cross-entropy target {} at row {} out of range (vocab {})",
             targets[i], i, V);
}

void CpuBackend::cross_entropy_forward(float* losses, const float* logits, const int32_t* targets,
                                       int64_t N, int64_t V) {
  check_targets(targets, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const int32_t t = targets[i];
    if (t < 0) {
      losses[i] = 0.0f;
      continue;
    }
    const float* x = logits + i * V;
    const float m = lane_max(x, V);
    const double lse = static_cast<double>(m) + std::log(row_sum_exp(x, V, m));
    losses[i] = static_cast<float>(lse - static_cast<double>(x[t]));
  }
}

void CpuBackend::cross_entropy_backward(float* dlogits, const float* logits,
                                        const int32_t* targets, const float* dloss, int64_t N,
                                        int64_t V) {
  check_targets(targets, N, V);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N; ++i) {
    const int32_t t = targets[i];
    float* d = dlogits + i * V;
    if (t < 0) {
      std::fill(d, d + V, 0.0f);
      continue;
    }
    const float* x = logits + i * V;  // may alias d: each element is read before it is written
    const float m = lane_max(x, V);
    const float k = static_cast<float>(static_cast<double>(dloss[i]) / row_sum_exp(x, V, m));
#pragma omp simd
    for (int64_t j = 0; j < V; ++j) d[j] = exp_approx(x[j] - m) * k;
    d[t] -= dloss[i];
  }
}

}  // namespace switchyard::core
