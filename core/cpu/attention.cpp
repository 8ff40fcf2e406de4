// core/cpu/attention.cpp: causal grouped-query attention on the CPU.
//
// Forward, per (batch, q head), in blocks of kRows query rows: S = scale * Q_blk K^T over the
// causal prefix of keys (dnnl_sgemm on strided views of the packed qkv buffer), masked row softmax
// (lse saved), O_blk = P V. Backward recomputes P from S and lse and never stores it:
//   dV += P^T dO, dP = dO V^T, D_i = rowsum(dO*O), dS = P*(dP - D), dQ = scale dS K,
//   dK += scale dS^T Q.
// Several q heads share a kv head, so backward runs one task per (batch, kv head) looping over the
// group's q heads (no races on dK/dV). When that gives too few tasks for the threads, it runs one
// task per (batch, q head) with per-head dK/dV partials that are summed over the group afterwards.
// Inside the OpenMP regions oneDNN's sgemm runs single-threaded.
#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/error.h"

namespace switchyard::core {
namespace {

constexpr int64_t kRows = 64;  // query rows per block

inline float fmadd(float a, float b, float c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// exp(x) for float, vectorisable (same as core/cpu/dense_kernels.cpp); 0 below -87.3.
inline float exp_approx(float x) {
  constexpr float kHi = 88.0f, kLo = -87.33654475f;
  const float xc = std::min(std::max(x, kLo), kHi);
  constexpr float kMagic = 12582912.0f;
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

// Score rows are processed in whole vectors of kLanes floats: a row's masked tail up to the next
// multiple of kLanes is set to -inf (exp gives 0), so the loops below have no scalar remainder.
constexpr int64_t kLanes = 16;
inline int64_t pad_lanes(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// max and sum over x[0, n), n a multiple of kLanes; the lanes are reduced as a tree.
inline float padded_max(const float* x, int64_t n) {
  float acc[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) acc[l] = -INFINITY;
  for (int64_t j = 0; j < n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = std::max(acc[l], x[j + l]);
  for (int64_t w = kLanes / 2; w > 0; w /= 2)
    for (int64_t l = 0; l < w; ++l) acc[l] = std::max(acc[l], acc[l + w]);
  return acc[0];
}

// x[j] = exp(x[j] - m) over [0, n), n a multiple of kLanes; returns the sum of the results.
inline float padded_exp_sum(float* x, int64_t n, float m) {
  float acc[kLanes] = {};
  for (int64_t j = 0; j < n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) {
      const float e = exp_approx(x[j + l] - m);
      x[j + l] = e;
      acc[l] += e;
    }
  for (int64_t w = kLanes / 2; w > 0; w /= 2)
    for (int64_t l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// Row-major sgemm; a failure is recorded (exceptions must not leave an OpenMP region).
inline void sgemm(std::atomic<int>& err, char ta, char tb, int64_t M, int64_t N, int64_t K,
                  float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                  float beta, float* C, int64_t ldc) {
  if (dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) != dnnl_success)
    err.store(1, std::memory_order_relaxed);
}

// Views of one head: q/k/v rows have stride ld (the packed qkv width); o/do rows stride ldo.
struct HeadView {
  const float *q, *k, *v;
  int64_t ld;
  const float *o, *dO;  // o: attention output rows of this head (backward only)
  int64_t ldo;
  const float* lse;     // [T]
};

// Forward of one (batch, head): writes o rows (stride ldo) and lse[T]. S: kRows*pad_lanes(T)
// scratch. The softmax normalisation 1/sum is applied to the HD-wide output rows, not to P.
void head_forward(std::atomic<int>& err, float* o, int64_t ldo, float* lse, const HeadView& h,
                  int64_t T, int64_t HD, float scale, float* S) {
  float inv[kRows];
  for (int64_t r0 = 0; r0 < T; r0 += kRows) {
    const int64_t r1 = std::min(T, r0 + kRows), m = r1 - r0;  // keys 0..r1 are visible
    const int64_t lds = pad_lanes(r1);
    sgemm(err, 'N', 'T', m, r1, HD, scale, h.q + r0 * h.ld, h.ld, h.k, h.ld, 0.0f, S, lds);
    for (int64_t i = 0; i < m; ++i) {
      float* s = S + i * lds;
      const int64_t n = r0 + i + 1, np = pad_lanes(n);  // causal: keys j < n
      std::fill(s + n, s + np, -INFINITY);
      const float mx = padded_max(s, np);
      const float sum = padded_exp_sum(s, np, mx);
      if (np < r1) std::fill(s + np, s + r1, 0.0f);
      inv[i] = 1.0f / sum;
      lse[r0 + i] = mx + std::log(sum);
    }
    float* ob = o + r0 * ldo;
    sgemm(err, 'N', 'N', m, HD, r1, 1.0f, S, lds, h.v, h.ld, 0.0f, ob, ldo);
    for (int64_t i = 0; i < m; ++i) {
#pragma omp simd
      for (int64_t c = 0; c < HD; ++c) ob[i * ldo + c] *= inv[i];
    }
  }
}

// Backward of one (batch, q head): dq rows (stride ld_dq) written (=); dk, dv rows (stride
// ld_dkv) accumulated (+=). P, dP: kRows*pad_lanes(T) scratch each.
void head_backward(std::atomic<int>& err, float* dq, int64_t ld_dq, float* dk, float* dv,
                   int64_t ld_dkv, const HeadView& h, int64_t T, int64_t HD, float scale,
                   float* P, float* dP) {
  for (int64_t r0 = 0; r0 < T; r0 += kRows) {
    const int64_t r1 = std::min(T, r0 + kRows), m = r1 - r0;
    const int64_t ldp = pad_lanes(r1);
    const float* dO = h.dO + r0 * h.ldo;
    const float* O = h.o + r0 * h.ldo;
    // P = exp(S - lse) on the causal part, 0 elsewhere
    sgemm(err, 'N', 'T', m, r1, HD, scale, h.q + r0 * h.ld, h.ld, h.k, h.ld, 0.0f, P, ldp);
    for (int64_t i = 0; i < m; ++i) {
      float* p = P + i * ldp;
      const int64_t n = r0 + i + 1, np = pad_lanes(n);
      const float l = h.lse[r0 + i];
      std::fill(p + n, p + np, -INFINITY);
      for (int64_t j = 0; j < np; j += kLanes)
        for (int64_t c = 0; c < kLanes; ++c) p[j + c] = exp_approx(p[j + c] - l);
      if (np < r1) std::fill(p + np, p + r1, 0.0f);
    }
    // dV[0:r1] += P^T dO_blk
    sgemm(err, 'T', 'N', r1, HD, m, 1.0f, P, ldp, dO, h.ldo, 1.0f, dv, ld_dkv);
    // dP = dO_blk V^T
    sgemm(err, 'N', 'T', m, r1, HD, 1.0f, dO, h.ldo, h.v, h.ld, 0.0f, dP, ldp);
    // dS = P * (dP - D), D_i = dot(dO_i, O_i); stored over dP (P is 0 on the masked part)
    for (int64_t i = 0; i < m; ++i) {
      const float* doi = dO + i * h.ldo;
      const float* oi = O + i * h.ldo;
      float D = 0.0f;
#pragma omp simd reduction(+ : D)
      for (int64_t c = 0; c < HD; ++c) D += doi[c] * oi[c];
      const float* p = P + i * ldp;
      float* ds = dP + i * ldp;
      const int64_t np = pad_lanes(r0 + i + 1);
      if (np > r1) std::fill(ds + r1, ds + np, 0.0f);  // not written by the gemm
      for (int64_t j = 0; j < np; j += kLanes)
        for (int64_t c = 0; c < kLanes; ++c) ds[j + c] = p[j + c] * (ds[j + c] - D);
      if (np < r1) std::fill(ds + np, ds + r1, 0.0f);
    }
    // dQ_blk = scale * dS K[0:r1];  dK[0:r1] += scale * dS^T Q_blk
    sgemm(err, 'N', 'N', m, HD, r1, scale, dP, ldp, h.k, h.ld, 0.0f, dq + r0 * ld_dq, ld_dq);
    sgemm(err, 'T', 'N', r1, HD, m, scale, dP, ldp, h.q + r0 * h.ld, h.ld, 1.0f, dk, ld_dkv);
  }
}

// Fraction of thread slots busy when `tasks` equal tasks run on `threads` threads.
double occupancy(int64_t tasks, int64_t threads) {
  const int64_t rounds = (tasks + threads - 1) / threads;
  return rounds == 0 ? 1.0 : static_cast<double>(tasks) / static_cast<double>(rounds * threads);
}

void check_shape(const AttentionShape& s) {
  SY_CHECK(s.B >= 0 && s.T >= 0 && s.HD > 0 && s.NKV > 0 && s.NH > 0 && s.NH % s.NKV == 0,
           "bad attention shape B={} T={} NH={} NKV={} HD={}", s.B, s.T, s.NH, s.NKV, s.HD);
}

}  // namespace

void CpuBackend::attention_forward(float* out, float* lse, const float* qkv,
                                   const AttentionShape& s) {
  check_shape(s);
  if (s.B == 0 || s.T == 0) return;
  const int64_t B = s.B, T = s.T, NH = s.NH, HD = s.HD, W = s.qkv_width(), QW = s.q_width();
  const int64_t group = NH / s.NKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int64_t rows = std::min(T, kRows), row_len = pad_lanes(T);
  std::vector<float> scratch(static_cast<size_t>(omp_get_max_threads() * rows * row_len));
  std::atomic<int> err{0};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < B * NH; ++task) {
    const int64_t b = task / NH, h = task % NH, g = h / group;
    const float* base = qkv + b * T * W;
    HeadView v{base + h * HD, base + QW + g * HD, base + QW + (s.NKV + g) * HD, W,
               nullptr, nullptr, 0, nullptr};
    head_forward(err, out + b * T * QW + h * HD, QW, lse + (b * NH + h) * T, v, T, HD, scale,
                 scratch.data() + omp_get_thread_num() * rows * row_len);
  }
  if (err.load()) throw_internal("attention_forward: dnnl_sgemm failed");
}

void CpuBackend::attention_backward(float* dqkv, const float* dout, const float* out,
                                    const float* lse, const float* qkv, const AttentionShape& s) {
  check_shape(s);
  if (s.B == 0 || s.T == 0) return;
  const int64_t B = s.B, T = s.T, NH = s.NH, NKV = s.NKV, HD = s.HD, W = s.qkv_width(),
                QW = s.q_width();
  const int64_t group = NH / NKV;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const int64_t rows = std::min(T, kRows), row_len = pad_lanes(T);
  const int64_t threads = omp_get_max_threads();
  std::vector<float> scratch(static_cast<size_t>(threads * 2 * rows * row_len));
  std::atomic<int> err{0};
  auto view = [&](int64_t b, int64_t h) {
    const int64_t g = h / group;
    const float* base = qkv + b * T * W;
    return HeadView{base + h * HD, base + QW + g * HD, base + QW + (NKV + g) * HD, W,
                    out + b * T * QW + h * HD, dout + b * T * QW + h * HD, QW,
                    lse + (b * NH + h) * T};
  };

  const bool by_kv_head =
      group == 1 || occupancy(B * NKV, threads) + 0.15 >= occupancy(B * NH, threads);
  if (by_kv_head) {
    // one task per (b, kv head): dK, dV of the kv head are owned by the task
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * NKV; ++task) {
      const int64_t b = task / NKV, g = task % NKV;
      float* rows0 = dqkv + b * T * W;
      float* dk = rows0 + QW + g * HD;
      float* dv = rows0 + QW + (NKV + g) * HD;
      for (int64_t t = 0; t < T; ++t) {
        std::memset(dk + t * W, 0, static_cast<size_t>(HD) * sizeof(float));
        std::memset(dv + t * W, 0, static_cast<size_t>(HD) * sizeof(float));
      }
      float* P = scratch.data() + omp_get_thread_num() * 2 * rows * row_len;
      for (int64_t h = g * group; h < (g + 1) * group; ++h)
        head_backward(err, rows0 + h * HD, W, dk, dv, W, view(b, h), T, HD, scale, P,
                      P + rows * row_len);
    }
  } else {
    // one task per (b, q head): per-head dK|dV partials [B, NH, T, 2*HD], summed over the group
    std::vector<float> part(static_cast<size_t>(B * NH * T * 2 * HD));
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * NH; ++task) {
      const int64_t b = task / NH, h = task % NH;
      float* dk = part.data() + task * T * 2 * HD;
      float* P = scratch.data() + omp_get_thread_num() * 2 * rows * row_len;
      head_backward(err, dqkv + b * T * W + h * HD, W, dk, dk + HD, 2 * HD, view(b, h), T, HD,
                    scale, P, P + rows * row_len);
    }
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < B * T; ++r) {
      const int64_t b = r / T, t = r % T;
      for (int64_t g = 0; g < NKV; ++g) {
        float* dk = dqkv + r * W + QW + g * HD;
        float* dv = dqkv + r * W + QW + (NKV + g) * HD;
        std::fill(dk, dk + HD, 0.0f);
        std::fill(dv, dv + HD, 0.0f);
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const float* p = part.data() + ((b * NH + h) * T + t) * 2 * HD;
#pragma omp simd
          for (int64_t c = 0; c < HD; ++c) {
            dk[c] += p[c];
            dv[c] += p[HD + c];
          }
        }
      }
    }
  }
  if (err.load()) throw_internal("attention_backward: dnnl_sgemm failed");
}

}  // namespace switchyard::core
