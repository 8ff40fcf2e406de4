// core/router_row.h: the router's per-token math, one source for the CPU loop (core/cpu/
// moe_kernels.cpp) and the CUDA kernel (core/cuda/moe.cu), so both backends run the same
// operations in the same order. Semantics: core/backend.h (RouterOptions) and moe/router.h.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define SY_ROUTER_HD __host__ __device__
#else
#define SY_ROUTER_HD
#endif

namespace switchyard::core::router_row {

SY_ROUTER_HD inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// One token: l [E] -> p [E], lse, it [K], gt [K]. top_p > 0: the top-p cut (RouterOptions).
SY_ROUTER_HD inline void topk(float* p, float* lse, int32_t* it, float* gt, const float* l,
                              int64_t E, int64_t K, bool sigmoid_scoring, bool renormalize,
                              const float* bias, float top_p = 0.f) {
  float mx = l[0];
  for (int64_t e = 1; e < E; ++e) mx = fmaxf(mx, l[e]);
  float sum = 0.f, ssum = 0.f;
  if (sigmoid_scoring) {
    for (int64_t e = 0; e < E; ++e) {
      sum += expf(l[e] - mx);
      p[e] = sigmoid(l[e]);  // the scores s; normalised into affinities after selection
      ssum += p[e];
    }
  } else {
    for (int64_t e = 0; e < E; ++e) {
      p[e] = expf(l[e] - mx);
      sum += p[e];
    }
    const float inv = 1.0f / sum;
    for (int64_t e = 0; e < E; ++e) p[e] *= inv;
  }
  *lse = mx + logf(sum);

  // Insertion of the selection keys (score + bias) into a descending list of length K; strict
  // '>' keeps the earlier (lower) index ahead on ties. gt holds the keys while selecting.
  int64_t filled = 0;
  for (int64_t e = 0; e < E; ++e) {
    const float v = bias ? p[e] + bias[e] : p[e];
    if (filled == K && !(v > gt[K - 1])) continue;
    int64_t j = filled < K ? filled++ : K - 1;
    while (j > 0 && v > gt[j - 1]) {
      gt[j] = gt[j - 1];
      it[j] = it[j - 1];
      --j;
    }
    gt[j] = v;
    it[j] = static_cast<int32_t>(e);
  }
  if (bias)
    for (int64_t k = 0; k < K; ++k) gt[k] = p[it[k]];  // gates are scores, never biased
  if (top_p > 0.f) {
    // keep the shortest prefix of the selection whose probs reach top_p (at least one slot);
    // sigmoid: probs are the affinities s / ssum, the values p holds on return
    const float inv = sigmoid_scoring ? 1.0f / ssum : 1.0f;
    float cum = 0.f;
    int64_t k = 0;
    while (k < K) {
      cum += sigmoid_scoring ? p[it[k]] * inv : p[it[k]];
      ++k;
      if (cum >= top_p) break;
    }
    for (; k < K; ++k) {
      it[k] = -1;
      gt[k] = 0.f;
    }
  }
  if (renormalize) {
    float s = 0.f;
    for (int64_t k = 0; k < K; ++k) s += gt[k];  // cut slots add 0: the sum is the kept set's
    const float is = 1.0f / s;
    for (int64_t k = 0; k < K; ++k) gt[k] *= is;
  }
  if (sigmoid_scoring) {
    const float inv = 1.0f / ssum;
    for (int64_t e = 0; e < E; ++e) p[e] *= inv;
  }
}

// One token: dl [E] (=) from dg [K] and the aux term a [E] (may be null), z_coef.
SY_ROUTER_HD inline void backward(float* dl, const float* dg, const float* l, const float* p,
                                  float lse, const int32_t* it, const float* g, const float* a,
                                  float z_coef, int64_t E, int64_t K, bool sigmoid_scoring,
                                  bool renormalize) {
  // dL/dscores first (softmax: the probs; sigmoid: the scores s), then dL/dlogits
  float S = 0.f, sdg = 0.f;  // sum of the selected scores, sum_k dg_k g_k
  if (sigmoid_scoring) {
    // the aux term reaches s through the affinities p = s / T, T = sum_e s
    float T = 0.f, adot = 0.f;
    for (int64_t e = 0; e < E; ++e) T += sigmoid(l[e]);
    if (a)
      for (int64_t e = 0; e < E; ++e) adot += a[e] * p[e];
    const float iT = 1.0f / T;
    for (int64_t e = 0; e < E; ++e) dl[e] = a ? (a[e] - adot) * iT : 0.f;
  } else {
    for (int64_t e = 0; e < E; ++e) dl[e] = a ? a[e] : 0.f;
  }
  if (renormalize) {
    // g_k = s_k / S: ds_k = (dg_k - sum_j dg_j g_j) / S
    for (int64_t k = 0; k < K; ++k) {
      if (it[k] < 0) continue;
      S += sigmoid_scoring ? sigmoid(l[it[k]]) : p[it[k]];
      sdg += dg[k] * g[k];
    }
    if (S > 0.f) {
      const float iS = 1.0f / S;
      for (int64_t k = 0; k < K; ++k)
        if (it[k] >= 0) dl[it[k]] += (dg[k] - sdg) * iS;
    }
  } else {
    for (int64_t k = 0; k < K; ++k)
      if (it[k] >= 0) dl[it[k]] += dg[k];
  }
  const float zt = z_coef * 2.0f * lse;
  if (sigmoid_scoring) {
    for (int64_t e = 0; e < E; ++e) {
      const float s = sigmoid(l[e]);
      const float z = zt != 0.f ? zt * expf(l[e] - lse) : 0.f;
      dl[e] = dl[e] * s * (1.0f - s) + z;
    }
  } else {
    float dot = 0.f;
    for (int64_t e = 0; e < E; ++e) dot += p[e] * dl[e];
    for (int64_t e = 0; e < E; ++e) dl[e] = p[e] * (dl[e] - dot + zt);
  }
}

}  // namespace switchyard::core::router_row
