// tests/unit/moe_reference.h: the softmax top-k router in double precision, straight from its
// definition (probs, lse, the top-k by probability with ties to the lower index, gates optionally
// renormalised): the reference of the router kernel (test_moe.cpp) and of the MoE layer
// (test_moe_layer.cpp); and the small helpers both files share.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <memory>
#include <vector>

#include "core/backend.h"

namespace switchyard::test {

// The CPU backend these kernel tests check (2 threads), whatever SWITCHYARD_TEST_BACKEND says.
inline std::unique_ptr<core::Backend> cpu() { return core::make_cpu_backend(2); }
inline std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct RefRoute {
  std::vector<double> probs, lse, gates;
  std::vector<int32_t> idx;
};

inline RefRoute ref_router(const std::vector<double>& logits, int64_t N, int64_t E, int64_t K,
                    bool renorm) {
  RefRoute r;
  r.probs.resize(N * E);
  r.lse.resize(N);
  r.gates.resize(N * K);
  r.idx.resize(N * K);
  for (int64_t t = 0; t < N; ++t) {
    double mx = -INFINITY;
    for (int64_t e = 0; e < E; ++e) mx = std::max(mx, logits[t * E + e]);
    double s = 0;
    for (int64_t e = 0; e < E; ++e) s += std::exp(logits[t * E + e] - mx);
    r.lse[t] = mx + std::log(s);
    for (int64_t e = 0; e < E; ++e) r.probs[t * E + e] = std::exp(logits[t * E + e] - r.lse[t]);
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return r.probs[t * E + a] > r.probs[t * E + b]; });
    double gs = 0;
    for (int64_t k = 0; k < K; ++k) {
      r.idx[t * K + k] = order[k];
      r.gates[t * K + k] = r.probs[t * E + order[k]];
      gs += r.gates[t * K + k];
    }
    if (renorm)
      for (int64_t k = 0; k < K; ++k) r.gates[t * K + k] /= gs;
  }
  return r;
}

}  // namespace switchyard::test
