// core/cpu/attention.cpp: causal grouped-query attention on the CPU.
//
// Forward, per (batch, kv head) group of q heads, in blocks of kRows query positions: the group's
// query rows of the block are stacked (head-major) into one [G*kRows, HD] matrix, so each block
// takes two dnnl_sgemm calls for all G heads: S = scale * Q_blk K^T over the causal prefix of
// keys, masked row softmax (lse saved), O_blk = P V. Backward recomputes P from S and lse and
// never stores it:
//   dV += P^T dO, dP = dO V^T, D_i = rowsum(dO*O), dS = P*(dP - D), dQ = scale dS K,
//   dK += scale dS^T Q.
// One task per (batch, kv head) owns that kv head's dK/dV (no races). When that gives too few
// tasks for the threads, tasks are single q heads (G = 1), and backward writes per-head dK/dV
// partials that are summed over the group afterwards.
// Packed rows (AttentionShape::doc_start): query t also masks the keys before its document's start,
// and a block's GEMMs start at the earliest document start of its rows (keys before it are never
// visible to the block); without doc_start that start is 0 and the kernels are the plain causal ones.
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
#include "core/cpu/scalar_math.h"
#include "core/cpu/simd.h"
#include "core/error.h"

namespace switchyard::core {
namespace {

constexpr int64_t kRows = 64;  // query rows per block



// Score rows are processed in whole vectors of kLanes floats: a row's masked tail up to the next
// multiple of kLanes is set to -inf (exp gives 0), so the loops below have no scalar remainder.
constexpr int64_t kLanes = 16;
inline int64_t pad_lanes(int64_t n) { return (n + kLanes - 1) / kLanes * kLanes; }

// max and sum over x[0, n), n a multiple of kLanes; the lanes are reduced as a tree.
inline float padded_max(const float* x, int64_t n) {
#ifdef SWITCHYARD_AVX2
  __m256 a0 = _mm256_set1_ps(-INFINITY), a1 = a0;
  for (int64_t j = 0; j < n; j += kLanes) {
    a0 = _mm256_max_ps(a0, _mm256_loadu_ps(x + j));
    a1 = _mm256_max_ps(a1, _mm256_loadu_ps(x + j + 8));
  }
  return simd::hmax8(_mm256_max_ps(a0, a1));
#else
  float acc[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) acc[l] = -INFINITY;
  for (int64_t j = 0; j < n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = std::max(acc[l], x[j + l]);
  for (int64_t w = kLanes / 2; w > 0; w /= 2)
    for (int64_t l = 0; l < w; ++l) acc[l] = std::max(acc[l], acc[l + w]);
  return acc[0];
#endif
}

// x[j] = exp(x[j] - m) over [0, n), n a multiple of kLanes; returns the sum of the results.
inline float padded_exp_sum(float* x, int64_t n, float m) {
#ifdef SWITCHYARD_AVX2
  const __m256 vm = _mm256_set1_ps(m);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  for (int64_t j = 0; j < n; j += kLanes) {
    const __m256 e0 = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    const __m256 e1 = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
    _mm256_storeu_ps(x + j, e0);
    _mm256_storeu_ps(x + j + 8, e1);
    a0 = _mm256_add_ps(a0, e0);
    a1 = _mm256_add_ps(a1, e1);
  }
  return simd::hsum8(_mm256_add_ps(a0, a1));
#else
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
#endif
}

// x[j] = exp(x[j] - m) over [0, n), n a multiple of kLanes.
inline void padded_exp(float* x, int64_t n, float m) {
#ifdef SWITCHYARD_AVX2
  const __m256 vm = _mm256_set1_ps(m);
  for (int64_t j = 0; j < n; j += kLanes) {
    const __m256 e0 = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    const __m256 e1 = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
    _mm256_storeu_ps(x + j, e0);
    _mm256_storeu_ps(x + j + 8, e1);
  }
#else
  for (int64_t j = 0; j < n; j += kLanes)
    for (int64_t c = 0; c < kLanes; ++c) x[j + c] = exp_approx(x[j + c] - m);
#endif
}

// Row-major sgemm; a failure is recorded (exceptions must not leave an OpenMP region).
inline void sgemm(std::atomic<int>& err, char ta, char tb, int64_t M, int64_t N, int64_t K,
                  float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,
                  float beta, float* C, int64_t ldc) {
  if (dnnl_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) != dnnl_success)
    err.store(1, std::memory_order_relaxed);
}

// Views of G consecutive q heads h0..h0+G-1 that share one kv head, for one batch: q/k/v rows
// have stride ld (the packed qkv width), q head h0+j starts j*HD floats after q; o/dO rows have
// stride ldo, head j at j*HD; lse holds T values per head, the heads T apart.
struct GroupView {
  const float *q, *k, *v;
  int64_t ld;
  const float *o, *dO;  // backward only
  int64_t ldo;
  const float* lse;     // backward only
  int64_t G;
  const int32_t* doc;   // the batch's T document starts (null: every row one document)
};

// Per-thread scratch of the group kernels, for up to G*kRows stacked query rows.
struct GroupScratch {
  float *S, *dP;           // [G*kRows, pad_lanes(T)] each (dP: backward only)
  float *Qs, *Ys, *Zs;     // [G*kRows, HD] each: stacked rows (q | o or dO | dq)
  float* row;              // [G*kRows]: 1/sum (forward) or D (backward)
  static int64_t floats(int64_t G, int64_t T, int64_t HD) {
    const int64_t R = G * std::min(T, kRows);
    return 2 * R * pad_lanes(T) + 3 * R * HD + R;
  }
  GroupScratch(float* base, int64_t G, int64_t T, int64_t HD) {
    const int64_t R = G * std::min(T, kRows);
    S = base;
    dP = S + R * pad_lanes(T);
    Qs = dP + R * pad_lanes(T);
    Ys = Qs + R * HD;
    Zs = Ys + R * HD;
    row = Zs + R * HD;
  }
};

// dst[(j*m + i)*HD + c] = src[(r0 + i)*ld + j*HD + c]: the rows r0..r0+m of G heads, stacked
// head-major into a dense [G*m, HD] block (so one GEMM serves the whole group).
inline void stack_rows(float* __restrict dst, const float* __restrict src, int64_t ld, int64_t r0,
                       int64_t m, int64_t G, int64_t HD) {
  for (int64_t j = 0; j < G; ++j)
    for (int64_t i = 0; i < m; ++i)
      std::memcpy(dst + (j * m + i) * HD, src + (r0 + i) * ld + j * HD,
                  static_cast<size_t>(HD) * sizeof(float));
}

// The first key any query row r0..r1-1 can see: 0 without packed rows.
inline int64_t first_key(const int32_t* doc, int64_t r0, int64_t r1) {
  return doc ? *std::min_element(doc + r0, doc + r1) : 0;
}

// Query row t sees keys [doc[t], t], i.e. [doc[t] - c0, n) with n = t+1-c0 relative to the block's
// first key c0. Sets the score row s to -inf outside them up to np = pad_lanes(n); returns np.
inline int64_t mask_row(float* s, const int32_t* doc, int64_t t, int64_t c0) {
  const int64_t n = t + 1 - c0, np = pad_lanes(n);
  if (doc && doc[t] > c0) std::fill(s, s + (doc[t] - c0), -INFINITY);
  std::fill(s + n, s + np, -INFINITY);
  return np;
}

// Forward of a group of G q heads sharing one kv head: writes their o rows and lse. The query
// rows of a block of kRows positions are stacked over the G heads, so S = Q K^T and O = P V are
// one GEMM each per block. The softmax normalisation 1/sum is applied to the HD-wide output rows,
// not to P.
void group_forward(std::atomic<int>& err, float* o, int64_t ldo, float* lse, const GroupView& h,
                   int64_t T, int64_t HD, float scale, const GroupScratch& w) {
  const int64_t G = h.G;
  for (int64_t r0 = 0; r0 < T; r0 += kRows) {
    const int64_t r1 = std::min(T, r0 + kRows), m = r1 - r0, M = G * m;
    const int64_t c0 = first_key(h.doc, r0, r1), kn = r1 - c0;  // keys c0..r1 visible
    const int64_t lds = pad_lanes(kn);
    stack_rows(w.Qs, h.q, h.ld, r0, m, G, HD);
    sgemm(err, 'N', 'T', M, kn, HD, scale, w.Qs, HD, h.k + c0 * h.ld, h.ld, 0.0f, w.S, lds);
    for (int64_t R = 0; R < M; ++R) {
      const int64_t j = R / m, i = R % m;
      float* s = w.S + R * lds;
      const int64_t np = mask_row(s, h.doc, r0 + i, c0);
      const float mx = padded_max(s, np);
      const float sum = padded_exp_sum(s, np, mx);
      if (np < kn) std::fill(s + np, s + kn, 0.0f);
      w.row[R] = 1.0f / sum;
      lse[j * T + r0 + i] = mx + std::log(sum);
    }
    sgemm(err, 'N', 'N', M, HD, kn, 1.0f, w.S, lds, h.v + c0 * h.ld, h.ld, 0.0f, w.Ys, HD);
    for (int64_t R = 0; R < M; ++R) {
      const int64_t j = R / m, i = R % m;
      const float* y = w.Ys + R * HD;
      float* ob = o + (r0 + i) * ldo + j * HD;
      const float inv = w.row[R];
#pragma omp simd
      for (int64_t c = 0; c < HD; ++c) ob[c] = y[c] * inv;
    }
  }
}

// Backward of a group of G q heads sharing one kv head: their dq rows (stride ld_dq, head j at
// j*HD) are written (=); dk, dv rows (stride ld_dkv) accumulated (+=). Per block of kRows
// positions the G heads' rows are stacked, so each of the five products is one GEMM.
void group_backward(std::atomic<int>& err, float* dq, int64_t ld_dq, float* dk, float* dv,
                    int64_t ld_dkv, const GroupView& h, int64_t T, int64_t HD, float scale,
                    const GroupScratch& w) {
  const int64_t G = h.G;
  for (int64_t r0 = 0; r0 < T; r0 += kRows) {
    const int64_t r1 = std::min(T, r0 + kRows), m = r1 - r0, M = G * m;
    const int64_t c0 = first_key(h.doc, r0, r1), kn = r1 - c0;  // keys c0..r1 visible
    const int64_t ldp = pad_lanes(kn);
    const float* k = h.k + c0 * h.ld;
    const float* v = h.v + c0 * h.ld;
    float *P = w.S, *dP = w.dP, *Qs = w.Qs, *dOs = w.Ys, *dQs = w.Zs;
    stack_rows(Qs, h.q, h.ld, r0, m, G, HD);
    stack_rows(dOs, h.dO, h.ldo, r0, m, G, HD);
    // P = exp(S - lse) on the visible part, 0 elsewhere
    sgemm(err, 'N', 'T', M, kn, HD, scale, Qs, HD, k, h.ld, 0.0f, P, ldp);
    for (int64_t R = 0; R < M; ++R) {
      const int64_t j = R / m, i = R % m;
      float* p = P + R * ldp;
      const int64_t np = mask_row(p, h.doc, r0 + i, c0);
      padded_exp(p, np, h.lse[j * T + r0 + i]);
      if (np < kn) std::fill(p + np, p + kn, 0.0f);
      // D = dot(dO, O) of this row
      const float* doi = dOs + R * HD;
      const float* oi = h.o + (r0 + i) * h.ldo + j * HD;
      float D = 0.0f;
#pragma omp simd reduction(+ : D)
      for (int64_t c = 0; c < HD; ++c) D += doi[c] * oi[c];
      w.row[R] = D;
    }
    // dV[c0:r1] += P^T dO
    sgemm(err, 'T', 'N', kn, HD, M, 1.0f, P, ldp, dOs, HD, 1.0f, dv + c0 * ld_dkv, ld_dkv);
    // dP = dO V^T
    sgemm(err, 'N', 'T', M, kn, HD, 1.0f, dOs, HD, v, h.ld, 0.0f, dP, ldp);
    // dS = P * (dP - D), stored over dP (P is 0 on the masked part)
    for (int64_t R = 0; R < M; ++R) {
      const int64_t i = R % m;
      const float D = w.row[R];
      const float* p = P + R * ldp;
      float* ds = dP + R * ldp;
      const int64_t np = pad_lanes(r0 + i + 1 - c0);
      if (np > kn) std::fill(ds + kn, ds + np, 0.0f);  // not written by the gemm
      for (int64_t jj = 0; jj < np; jj += kLanes)
        for (int64_t c = 0; c < kLanes; ++c) ds[jj + c] = p[jj + c] * (ds[jj + c] - D);
      if (np < kn) std::fill(ds + np, ds + kn, 0.0f);
    }
    // dQ = scale * dS K[c0:r1] (stacked, then scattered);  dK[c0:r1] += scale * dS^T Q
    sgemm(err, 'N', 'N', M, HD, kn, scale, dP, ldp, k, h.ld, 0.0f, dQs, HD);
    sgemm(err, 'T', 'N', kn, HD, M, scale, dP, ldp, Qs, HD, 1.0f, dk + c0 * ld_dkv, ld_dkv);
    for (int64_t R = 0; R < M; ++R) {
      const int64_t j = R / m, i = R % m;
      std::memcpy(dq + (r0 + i) * ld_dq + j * HD, dQs + R * HD,
                  static_cast<size_t>(HD) * sizeof(float));
    }
  }
}

// Fraction of thread slots busy when `tasks` equal tasks run on `threads` threads.
double occupancy(int64_t tasks, int64_t threads) {
  const int64_t rounds = (tasks + threads - 1) / threads;
  return rounds == 0 ? 1.0 : static_cast<double>(tasks) / static_cast<double>(rounds * threads);
}

// The sizes of one attention call (both directions), checked: qkv rows of W floats, outputs of
// QW, `group` q heads per kv head, and the softmax scale.
struct Dims {
  int64_t B, T, NH, NKV, HD, W, QW, group;
  float scale;
};
Dims checked_dims(const AttentionShape& s) {
  SY_CHECK(s.B >= 0 && s.T >= 0 && s.HD > 0 && s.NKV > 0 && s.NH > 0 && s.NH % s.NKV == 0,
           "bad attention shape B={} T={} NH={} NKV={} HD={}", s.B, s.T, s.NH, s.NKV, s.HD);
  return {s.B, s.T, s.NH, s.NKV, s.HD, s.qkv_width(), s.q_width(), s.NH / s.NKV,
          1.0f / std::sqrt(static_cast<float>(s.HD))};
}

// The q, k, v columns of q heads h0 .. h0+G-1 of batch b (one kv head) inside qkv [B, T, W], and
// the batch's document starts (doc_start [B, T] or null).
GroupView group_view(const float* qkv, const int32_t* doc_start, const Dims& d, int64_t b,
                     int64_t h0, int64_t G) {
  const int64_t g = h0 / d.group;
  const float* base = qkv + b * d.T * d.W;
  return GroupView{base + h0 * d.HD, base + d.QW + g * d.HD, base + d.QW + (d.NKV + g) * d.HD, d.W,
                   nullptr, nullptr, 0, nullptr, G, doc_start ? doc_start + b * d.T : nullptr};
}

}  // namespace

// Tasks are (batch, kv head) groups of q heads when that keeps the threads about as busy as
// (batch, q head) tasks would; otherwise one q head per task.
static bool by_kv_head(const AttentionShape& s, int64_t threads) {
  return s.NH == s.NKV ||
         occupancy(s.B * s.NKV, threads) + 0.15 >= occupancy(s.B * s.NH, threads);
}

void CpuBackend::attention_forward(float* out, float* lse, const float* qkv,
                                   const AttentionShape& s) {
  const Dims d = checked_dims(s);
  if (d.B == 0 || d.T == 0) return;
  const auto [B, T, NH, NKV, HD, W, QW, group, scale] = d;
  const int64_t threads = omp_get_max_threads();
  const int64_t G = by_kv_head(s, threads) ? group : 1;  // q heads per task
  const int64_t per_thread = GroupScratch::floats(G, T, HD);
  std::vector<float> scratch(static_cast<size_t>(threads * per_thread));
  std::atomic<int> err{0};
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t task = 0; task < B * (NH / G); ++task) {
    const int64_t b = task / (NH / G), h0 = (task % (NH / G)) * G;
    group_forward(err, out + b * T * QW + h0 * HD, QW, lse + (b * NH + h0) * T,
                  group_view(qkv, s.doc_start, d, b, h0, G), T, HD, scale,
                  GroupScratch(scratch.data() + omp_get_thread_num() * per_thread, G, T, HD));
  }
  if (err.load()) throw_internal("attention_forward: dnnl_sgemm failed");
}

void CpuBackend::attention_backward(float* dqkv, const float* dout, const float* out,
                                    const float* lse, const float* qkv, const AttentionShape& s) {
  const Dims d = checked_dims(s);
  if (d.B == 0 || d.T == 0) return;
  const auto [B, T, NH, NKV, HD, W, QW, group, scale] = d;
  const int64_t threads = omp_get_max_threads();
  std::atomic<int> err{0};
  auto view = [&](int64_t b, int64_t h0, int64_t G) {  // plus the forward's o, lse and dO
    GroupView v = group_view(qkv, s.doc_start, d, b, h0, G);
    v.o = out + b * T * QW + h0 * HD;
    v.dO = dout + b * T * QW + h0 * HD;
    v.ldo = QW;
    v.lse = lse + (b * NH + h0) * T;
    return v;
  };

  if (by_kv_head(s, threads)) {
    // one task per (b, kv head) for its whole group of q heads: dK, dV are owned by the task
    const int64_t per_thread = GroupScratch::floats(group, T, HD);
    std::vector<float> scratch(static_cast<size_t>(threads * per_thread));
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
      group_backward(err, rows0 + g * group * HD, W, dk, dv, W, view(b, g * group, group), T, HD,
                     scale,
                     GroupScratch(scratch.data() + omp_get_thread_num() * per_thread, group, T,
                                  HD));
    }
  } else {
    // one task per (b, q head): per-head dK|dV partials [B, NH, T, 2*HD], summed over the group
    const int64_t per_thread = GroupScratch::floats(1, T, HD);
    std::vector<float> scratch(static_cast<size_t>(threads * per_thread));
    std::vector<float> part(static_cast<size_t>(B * NH * T * 2 * HD));
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * NH; ++task) {
      const int64_t b = task / NH, h = task % NH;
      float* dk = part.data() + task * T * 2 * HD;
      group_backward(err, dqkv + b * T * W + h * HD, W, dk, dk + HD, 2 * HD, view(b, h, 1), T, HD,
                     scale,
                     GroupScratch(scratch.data() + omp_get_thread_num() * per_thread, 1, T, HD));
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

// One task per q head: the scores of row T-1 against every key, their softmax (max first, sum in
// double), then the weighted sum of the values.
void CpuBackend::attention_decode(float* out, const float* qkv, const AttentionShape& s) {
  SY_CHECK(s.B == 1 && !s.doc_start, "attention_decode: one sequence without doc_start (got B {})", s.B);
  const int64_t T = s.T, HD = s.HD, W = s.qkv_width(), QW = s.q_width(), group = s.NH / s.NKV;
  if (T == 0) return;
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  const float* q_row = qkv + (T - 1) * W;
#pragma omp parallel for schedule(static)
  for (int64_t h = 0; h < s.NH; ++h) {
    const int64_t kvh = h / group;
    const float* q = q_row + h * HD;
    std::vector<float> p(static_cast<size_t>(T));
    float m = -INFINITY;
    for (int64_t j = 0; j < T; ++j) {
      const float* k = qkv + j * W + QW + kvh * HD;
      float d = 0;
      for (int64_t i = 0; i < HD; ++i) d += q[i] * k[i];
      p[j] = scale * d;
      m = std::max(m, p[j]);
    }
    double sum = 0;
    for (int64_t j = 0; j < T; ++j) sum += p[j] = std::exp(p[j] - m);
    float* o = out + h * HD;
    std::fill(o, o + HD, 0.0f);
    for (int64_t j = 0; j < T; ++j) {
      const float* v = qkv + j * W + QW + (s.NKV + kvh) * HD;
      for (int64_t i = 0; i < HD; ++i) o[i] += p[j] * v[i];
    }
    const auto inv = static_cast<float>(1.0 / sum);
    for (int64_t i = 0; i < HD; ++i) o[i] *= inv;
  }
}

}  // namespace switchyard::core
