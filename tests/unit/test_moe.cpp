// tests/unit/test_moe.cpp: MoE kernels (SwiGLU, sigmoid gate, router, routing plan, dispatch,
// combine) against naive double references, finite-difference checks of their backward passes,
// and the whole MoeLayer against a double reference and finite differences.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/error.h"
#include "core/params.h"
#include "moe/moe_layer.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using test::max_rel_error;
using test::randn;

std::unique_ptr<core::Backend> cpu() { return core::make_cpu_backend(2); }

std::vector<float> to_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// Central finite differences of f at every coordinate in `coords` of v (float inputs, double loss).
std::vector<double> fd_grad(std::vector<float>& v, const std::vector<int64_t>& coords, float eps,
                            const std::function<double()>& f) {
  std::vector<double> g;
  for (int64_t i : coords) {
    const float v0 = v[i];
    v[i] = v0 + eps;
    const float up = v[i];
    const double fp = f();
    v[i] = v0 - eps;
    const float dn = v[i];
    const double fm = f();
    v[i] = v0;
    g.push_back((fp - fm) / (static_cast<double>(up) - dn));
  }
  return g;
}

std::vector<int64_t> all_coords(int64_t n) {
  std::vector<int64_t> c(static_cast<size_t>(n));
  std::iota(c.begin(), c.end(), 0);
  return c;
}

// |a - b| <= atol + rtol * |b| for each pair; atol is relative to the largest |b|.
void expect_grad_close(const std::vector<double>& fd, const std::vector<float>& analytic,
                       const std::vector<int64_t>& coords, double rtol, double atol_frac,
                       const std::string& what) {
  double scale = 0;
  for (double v : fd) scale = std::max(scale, std::abs(v));
  const double atol = atol_frac * std::max(scale, 1e-6);
  int bad = 0;
  for (size_t j = 0; j < coords.size(); ++j) {
    const double a = analytic[static_cast<size_t>(coords[j])], b = fd[j];
    if (!(std::abs(a - b) <= atol + rtol * std::abs(b))) {
      if (++bad <= 5)
        ADD_FAILURE() << what << ": coordinate " << coords[j] << " analytic " << a << " fd " << b;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << coords.size() << " gradients differ";
}

// ---------------------------------------------------------------------------------------------
// double references of the kernels
// ---------------------------------------------------------------------------------------------

struct RefRoute {
  std::vector<double> probs, lse, gates;
  std::vector<int32_t> idx;
};

RefRoute ref_router(const std::vector<double>& logits, int64_t N, int64_t E, int64_t K,
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

// dlogits by the formulas (not through the kernel's code path): the Jacobian of the gates
// w.r.t. probs, then the softmax Jacobian, built element by element.
std::vector<double> ref_router_backward(const std::vector<double>& dgates, const RefRoute& r,
                                        const std::vector<double>& dprobs_all, double z_coef,
                                        int64_t N, int64_t E, int64_t K, bool renorm) {
  std::vector<double> dl(N * E, 0.0);
  for (int64_t t = 0; t < N; ++t) {
    std::vector<double> dp(E, 0.0);
    for (int64_t e = 0; e < E; ++e) dp[e] = dprobs_all.empty() ? 0.0 : dprobs_all[e];
    double S = 0;
    for (int64_t k = 0; k < K; ++k) S += r.probs[t * E + r.idx[t * K + k]];
    // d gate_k / d p_j for selected j
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < K; ++j) {
        const double pk = r.probs[t * E + r.idx[t * K + k]];
        double J;
        if (renorm)
          J = ((k == j ? 1.0 : 0.0) * S - pk) / (S * S);
        else
          J = k == j ? 1.0 : 0.0;
        dp[r.idx[t * K + j]] += dgates[t * K + k] * J;
      }
    for (int64_t i = 0; i < E; ++i) {
      double s = 0;
      for (int64_t e = 0; e < E; ++e) {
        const double jac = r.probs[t * E + e] * ((e == i ? 1.0 : 0.0) - r.probs[t * E + i]);
        s += dp[e] * jac;
      }
      dl[t * E + i] = s + z_coef * 2.0 * r.lse[t] * r.probs[t * E + i];
    }
  }
  return dl;
}

// ---------------------------------------------------------------------------------------------
// (a) kernels against the double references
// ---------------------------------------------------------------------------------------------

class SwigluShapes : public ::testing::TestWithParam<std::pair<int64_t, int64_t>> {};

TEST_P(SwigluShapes, ForwardBackwardMatchReference) {
  auto be = cpu();
  const auto [rows, I] = GetParam();
  auto h = randn(rows * 2 * I, 11, 2.0f);
  h[0] = -120.f;  // far tails: silu ~ 0 and ~ x
  h[1] = 95.f;
  auto dout = randn(rows * I, 12);
  std::vector<float> out(rows * I, NAN), dh(rows * 2 * I, NAN);
  be->swiglu_forward(out.data(), h.data(), rows, I);
  be->swiglu_backward(dh.data(), dout.data(), h.data(), rows, I);
  std::vector<float> ref_out(rows * I), ref_dh(rows * 2 * I);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < I; ++i) {
      const double g = h[r * 2 * I + i], u = h[r * 2 * I + I + i], s = sigmoid(g);
      ref_out[r * I + i] = static_cast<float>(g * s * u);
      ref_dh[r * 2 * I + i] = static_cast<float>(dout[r * I + i] * u * (s + g * s * (1 - s)));
      ref_dh[r * 2 * I + I + i] = static_cast<float>(dout[r * I + i] * g * s);
    }
  EXPECT_LT(max_rel_error(out.data(), ref_out.data(), rows * I), 2e-6);
  // floor 1e-2: d silu/dg cancels near g = -1.28, so tiny values carry absolute rounding error
  EXPECT_LT(max_rel_error(dh.data(), ref_dh.data(), rows * 2 * I, 1e-2), 3e-5);
}

// small (serial path, odd width for the vector tail) and large (OpenMP path)
INSTANTIATE_TEST_SUITE_P(Moe, SwigluShapes,
                         ::testing::Values(std::make_pair<int64_t, int64_t>(5, 7),
                                           std::make_pair<int64_t, int64_t>(300, 77)));

TEST(MoeKernels, SigmoidGateMatchesReference) {
  auto be = cpu();
  for (int64_t rows : {7, 900}) {
    const int64_t C = 37;
    auto logit = randn(rows, 21, 2.0f);
    auto y = randn(rows * C, 22), out = randn(rows * C, 23), dout = randn(rows * C, 24);
    std::vector<float> ref_out(rows * C), ref_dy(rows * C), ref_dl(rows);
    for (int64_t r = 0; r < rows; ++r) {
      const double s = sigmoid(logit[r]);
      double dot = 0;
      for (int64_t c = 0; c < C; ++c) {
        ref_out[r * C + c] = static_cast<float>(out[r * C + c] + s * y[r * C + c]);
        ref_dy[r * C + c] = static_cast<float>(s * dout[r * C + c]);
        dot += static_cast<double>(dout[r * C + c]) * y[r * C + c];
      }
      ref_dl[r] = static_cast<float>(s * (1 - s) * dot);
    }
    std::vector<float> dy(rows * C, NAN), dl(rows, NAN);
    be->sigmoid_gate_forward(out.data(), logit.data(), y.data(), rows, C);
    be->sigmoid_gate_backward(dy.data(), dl.data(), dout.data(), logit.data(), y.data(), rows, C);
    // sums of O(1) terms in fp32: relative error floored at 0.1 (cancellation)
    EXPECT_LT(max_rel_error(out.data(), ref_out.data(), rows * C, 0.1), 1e-5);
    EXPECT_LT(max_rel_error(dy.data(), ref_dy.data(), rows * C), 1e-6);
    EXPECT_LT(max_rel_error(dl.data(), ref_dl.data(), rows, 0.1), 1e-5);
  }
}

struct RouterCase {
  int64_t N, E, K;
  bool renorm;
};

void PrintTo(const RouterCase& c, std::ostream* os) {
  *os << "N=" << c.N << " E=" << c.E << " K=" << c.K << (c.renorm ? " renorm" : "");
}

class RouterKernels : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouterKernels, TopkAndBackwardMatchReference) {
  auto be = cpu();
  const auto [N, E, K, renorm] = GetParam();
  auto logits = randn(N * E, 31, 1.5f);
  logits[0] = 60.f;  // large logit: the softmax must subtract the max
  std::vector<float> probs(N * E), lse(N), gates(N * K);
  std::vector<int32_t> idx(N * K);
  be->router_topk(probs.data(), lse.data(), idx.data(), gates.data(), logits.data(), N, E, K,
                  {core::RouterScoring::softmax, renorm, nullptr});
  RefRoute r = ref_router({logits.begin(), logits.end()}, N, E, K, renorm);
  EXPECT_EQ(idx, r.idx);
  EXPECT_LT(max_rel_error(probs.data(), to_float(r.probs).data(), N * E, 1e-6), 1e-5);
  EXPECT_LT(max_rel_error(lse.data(), to_float(r.lse).data(), N), 1e-6);
  EXPECT_LT(max_rel_error(gates.data(), to_float(r.gates).data(), N * K, 1e-6), 1e-5);

  auto dgates = randn(N * K, 32);
  auto dprobs_all = randn(E, 33);
  const float z_coef = 0.37f;
  std::vector<float> dlogits(N * E, NAN);
  be->router_backward(dlogits.data(), dgates.data(), nullptr, probs.data(), lse.data(), idx.data(),
                      gates.data(), dprobs_all.data(), z_coef, N, E, K, {core::RouterScoring::softmax, renorm, nullptr});
  auto ref = ref_router_backward({dgates.begin(), dgates.end()}, r,
                                 {dprobs_all.begin(), dprobs_all.end()}, z_coef, N, E, K, renorm);
  EXPECT_LT(max_rel_error(dlogits.data(), to_float(ref).data(), N * E, 1e-2), 1e-4);

  // without the aux and z terms
  be->router_backward(dlogits.data(), dgates.data(), nullptr, probs.data(), lse.data(), idx.data(),
                      gates.data(), nullptr, 0.f, N, E, K, {core::RouterScoring::softmax, renorm, nullptr});
  ref = ref_router_backward({dgates.begin(), dgates.end()}, r, {}, 0.0, N, E, K, renorm);
  EXPECT_LT(max_rel_error(dlogits.data(), to_float(ref).data(), N * E, 1e-2), 1e-4);
}

// (b) finite differences of the float kernels: L = sum dgates*gates + sum_te dprobs_all[e]*probs
// + z_coef * sum_t lse^2, differentiated w.r.t. the logits.
class RouterFiniteDifferences : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouterFiniteDifferences, BackwardMatchesFiniteDifferences) {
  auto be = cpu();
  const auto [N, E, K, renorm] = GetParam();
  auto logits = randn(N * E, 41, 1.5f);
  auto dgates = randn(N * K, 42);
  auto dprobs_all = randn(E, 43);
  const float z_coef = 0.37f;
  std::vector<float> probs(N * E), lse(N), gates(N * K);
  std::vector<int32_t> idx(N * K), idx0;
  auto run = [&]() {
    be->router_topk(probs.data(), lse.data(), idx.data(), gates.data(), logits.data(), N, E, K,
                    {core::RouterScoring::softmax, renorm, nullptr});
  };
  run();
  idx0 = idx;
  std::vector<float> dlogits(N * E);
  be->router_backward(dlogits.data(), dgates.data(), nullptr, probs.data(), lse.data(), idx.data(),
                      gates.data(), dprobs_all.data(), z_coef, N, E, K, {core::RouterScoring::softmax, renorm, nullptr});
  bool flipped = false;
  auto loss = [&]() {
    run();
    if (idx != idx0) flipped = true;
    double L = 0;
    for (int64_t s = 0; s < N * K; ++s) L += static_cast<double>(dgates[s]) * gates[s];
    for (int64_t t = 0; t < N; ++t) {
      for (int64_t e = 0; e < E; ++e) L += static_cast<double>(dprobs_all[e]) * probs[t * E + e];
      L += z_coef * static_cast<double>(lse[t]) * lse[t];
    }
    return L;
  };
  // coordinates whose perturbation changes the top-k selection are skipped (not differentiable)
  std::vector<int64_t> coords;
  std::vector<double> fd;
  for (int64_t i = 0; i < N * E; ++i) {
    flipped = false;
    const double g = fd_grad(logits, {i}, 1e-2f, loss)[0];
    if (flipped) continue;
    coords.push_back(i);
    fd.push_back(g);
  }
  EXPECT_GE(coords.size(), static_cast<size_t>(N * E - 3)) << "too many selection flips";
  expect_grad_close(fd, dlogits, coords, 2e-3, 2e-3, "router dlogits");
}

INSTANTIATE_TEST_SUITE_P(Moe, RouterKernels,
                         ::testing::Values(RouterCase{13, 4, 2, true}, RouterCase{13, 4, 2, false},
                                           RouterCase{13, 4, 1, true}, RouterCase{13, 4, 1, false},
                                           RouterCase{9, 7, 3, true},
                                           RouterCase{2000, 16, 4, true}));
INSTANTIATE_TEST_SUITE_P(Moe, RouterFiniteDifferences,
                         ::testing::Values(RouterCase{13, 4, 2, true}, RouterCase{13, 4, 2, false},
                                           RouterCase{13, 4, 1, true}, RouterCase{13, 4, 1, false},
                                           RouterCase{9, 7, 3, true}, RouterCase{9, 7, 3, false}));

TEST(MoeKernels, TopkTiesGoToLowerIndex) {
  auto be = cpu();
  const int64_t N = 3, E = 5, K = 3;
  std::vector<float> logits = {1, 3, 3, 0, 3,   // three-way tie: 1, 2, 4
                               2, 2, 2, 2, 2,   // all equal: 0, 1, 2
                               0, 5, 1, 5, 1};  // 1, 3, then tie 2 vs 4 -> 2
  std::vector<float> probs(N * E), lse(N), gates(N * K);
  std::vector<int32_t> idx(N * K);
  be->router_topk(probs.data(), lse.data(), idx.data(), gates.data(), logits.data(), N, E, K,
                  {core::RouterScoring::softmax, false, nullptr});
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 2, 4, 0, 1, 2, 1, 3, 2}));
  EXPECT_FLOAT_EQ(gates[3], 0.2f);
  be->router_topk(probs.data(), lse.data(), idx.data(), gates.data(), logits.data(), N, E, K, {core::RouterScoring::softmax, true, nullptr});
  EXPECT_FLOAT_EQ(gates[3] + gates[4] + gates[5], 1.0f);
  EXPECT_FLOAT_EQ(gates[0], 1.0f / 3.0f);
  EXPECT_NEAR(lse[1], 2.0 + std::log(5.0), 1e-6);
}

// (d) routing plan: counting sort, stable in token order, dropped slots
TEST(MoeKernels, RoutePlanOrderAndDroppedSlots) {
  auto be = cpu();
  const int64_t N = 6, E = 4, K = 2;
  // expert 2 receives nothing; slots with -1 are dropped
  const std::vector<int32_t> idx = {3, 0, 0, -1, 1, 3, -1, -1, 0, 1, 3, 0};
  std::vector<int32_t> pos(N * K, 12345), off(E + 1, -7);
  be->route_plan(pos.data(), off.data(), idx.data(), N, E, K);
  // expert 0: slots 1 (t0), 2 (t1), 8 (t4), 11 (t5) -> rows 0..3; expert 1: slots 4, 9 -> 4, 5;
  // expert 2: none; expert 3: slots 0, 5, 10 -> 6, 7, 8
  EXPECT_EQ(off, (std::vector<int32_t>{0, 4, 6, 6, 9}));
  EXPECT_EQ(pos, (std::vector<int32_t>{6, 0, 1, -1, 4, 7, -1, -1, 2, 5, 8, 3}));

  // random plan against a naive reference
  const int64_t N2 = 500, E2 = 7, K2 = 3;
  std::vector<int32_t> idx2(N2 * K2);
  auto r = randn(N2 * K2, 51);
  for (int64_t s = 0; s < N2 * K2; ++s)
    idx2[s] = r[s] < -1.5f ? -1 : static_cast<int32_t>(std::abs(r[s] * 1000)) % E2;
  std::vector<int32_t> pos2(N2 * K2), off2(E2 + 1), ref_pos(N2 * K2, -1), ref_off(E2 + 1, 0);
  be->route_plan(pos2.data(), off2.data(), idx2.data(), N2, E2, K2);
  int32_t row = 0;
  for (int32_t e = 0; e < E2; ++e) {
    ref_off[e] = row;
    for (int64_t s = 0; s < N2 * K2; ++s)
      if (idx2[s] == e) ref_pos[s] = row++;
  }
  ref_off[E2] = row;
  EXPECT_EQ(off2, ref_off);
  EXPECT_EQ(pos2, ref_pos);
}

// A routing plan with dropped slots and one idle expert, for the permutation tests.
struct Plan {
  int64_t N, E, K, rows;
  std::vector<int32_t> idx, pos, off;
  std::vector<float> gates;
};

Plan make_plan(core::Backend& be, int64_t N, int64_t E, int64_t K, uint64_t seed, bool drop) {
  Plan p{N, E, K, 0, {}, {}, {}, {}};
  p.idx.resize(N * K);
  auto r = randn(N * K, seed);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t k = 0; k < K; ++k)  // distinct experts per token, never expert E-1 (idle)
      p.idx[t * K + k] = static_cast<int32_t>(
          (t * 5 + k * 2 + static_cast<int64_t>(std::abs(r[t]) * 3)) % (E - 1));
  if (drop)
    for (int64_t s = 0; s < N * K; s += 7) p.idx[s] = -1;
  p.pos.resize(N * K);
  p.off.resize(E + 1);
  be.route_plan(p.pos.data(), p.off.data(), p.idx.data(), N, E, K);
  p.rows = p.off[E];
  p.gates = randn(N * K, seed + 1);
  return p;
}

TEST(MoeKernels, DispatchCombineMatchReference) {
  auto be = cpu();
  for (int64_t N : {13, 700}) {
    const int64_t E = 5, K = 2, C = 24;
    Plan p = make_plan(*be, N, E, K, 61, /*drop=*/true);
    ASSERT_LT(p.rows, N * K);
    auto x = randn(N * C, 62);
    std::vector<float> xp(p.rows * C, NAN);
    be->dispatch_forward(xp.data(), x.data(), p.pos.data(), N, K, C);
    for (int64_t s = 0; s < N * K; ++s) {
      if (p.pos[s] < 0) continue;
      for (int64_t c = 0; c < C; ++c) ASSERT_EQ(xp[p.pos[s] * C + c], x[(s / K) * C + c]);
    }
    EXPECT_TRUE(std::none_of(xp.begin(), xp.end(), [](float v) { return std::isnan(v); }));

    auto y = randn(p.rows * C, 63), dout = randn(N * C, 64), dxp = randn(p.rows * C, 65);
    std::vector<float> out(N * C, NAN), dx(N * C, NAN), dy(p.rows * C, NAN), dg(N * K, NAN);
    be->combine_forward(out.data(), y.data(), p.pos.data(), p.gates.data(), N, K, C);
    be->combine_backward(dy.data(), dg.data(), dout.data(), y.data(), p.pos.data(), p.gates.data(),
                         N, K, C);
    be->dispatch_backward(dx.data(), dxp.data(), p.pos.data(), N, K, C);
    std::vector<float> ref_out(N * C, 0), ref_dx(N * C, 0), ref_dy(p.rows * C, NAN),
        ref_dg(N * K, 0);
    for (int64_t t = 0; t < N; ++t) {
      std::vector<double> o(C, 0), d(C, 0);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t s = t * K + k;
        const int32_t r = p.pos[s];
        if (r < 0) continue;
        double dot = 0;
        for (int64_t c = 0; c < C; ++c) {
          o[c] += static_cast<double>(p.gates[s]) * y[r * C + c];
          d[c] += dxp[r * C + c];
          ref_dy[r * C + c] = p.gates[s] * dout[t * C + c];
          dot += static_cast<double>(dout[t * C + c]) * y[r * C + c];
        }
        ref_dg[s] = static_cast<float>(dot);
      }
      for (int64_t c = 0; c < C; ++c) {
        ref_out[t * C + c] = static_cast<float>(o[c]);
        ref_dx[t * C + c] = static_cast<float>(d[c]);
      }
    }
    // sums of O(1) terms in fp32: relative error floored at 0.1 (cancellation)
    EXPECT_LT(max_rel_error(out.data(), ref_out.data(), N * C, 0.1), 1e-5);
    EXPECT_LT(max_rel_error(dx.data(), ref_dx.data(), N * C, 0.1), 1e-5);
    EXPECT_LT(max_rel_error(dy.data(), ref_dy.data(), p.rows * C), 1e-6);
    // a dot product of C fp32 terms: its rounding grows with C and the vector width
    EXPECT_LT(max_rel_error(dg.data(), ref_dg.data(), N * K, 0.1), 5e-5);
    // a token whose slots were all dropped gets zeros (written, not left as NaN)
    EXPECT_TRUE(std::none_of(out.begin(), out.end(), [](float v) { return std::isnan(v); }));
  }
}

// (b) finite differences of combine: dgates and dy
TEST(MoeKernels, CombineBackwardMatchesFiniteDifferences) {
  auto be = cpu();
  const int64_t N = 13, E = 4, K = 2, C = 8;
  Plan p = make_plan(*be, N, E, K, 71, /*drop=*/true);
  auto y = randn(p.rows * C, 72), R = randn(N * C, 73);
  std::vector<float> out(N * C), dy(p.rows * C), dg(N * K);
  auto loss = [&]() {
    be->combine_forward(out.data(), y.data(), p.pos.data(), p.gates.data(), N, K, C);
    double L = 0;
    for (int64_t i = 0; i < N * C; ++i) L += static_cast<double>(out[i]) * R[i];
    return L;
  };
  be->combine_backward(dy.data(), dg.data(), R.data(), y.data(), p.pos.data(), p.gates.data(), N, K,
                       C);
  auto cg = all_coords(N * K);
  expect_grad_close(fd_grad(p.gates, cg, 1e-2f, loss), dg, cg, 1e-3, 1e-3, "combine dgates");
  auto cy = all_coords(p.rows * C);
  expect_grad_close(fd_grad(y, cy, 1e-2f, loss), dy, cy, 1e-3, 1e-3, "combine dy");
}

TEST(MoeKernels, SwigluAndSigmoidGateMatchFiniteDifferences) {
  auto be = cpu();
  const int64_t rows = 6, I = 5, C = 7;
  auto h = randn(rows * 2 * I, 81, 1.5f), R = randn(rows * I, 82);
  std::vector<float> out(rows * I), dh(rows * 2 * I);
  auto swiglu_loss = [&]() {
    be->swiglu_forward(out.data(), h.data(), rows, I);
    double L = 0;
    for (int64_t i = 0; i < rows * I; ++i) L += static_cast<double>(out[i]) * R[i];
    return L;
  };
  be->swiglu_backward(dh.data(), R.data(), h.data(), rows, I);
  auto ch = all_coords(rows * 2 * I);
  expect_grad_close(fd_grad(h, ch, 1e-2f, swiglu_loss), dh, ch, 2e-3, 1e-3, "swiglu dh");

  auto logit = randn(rows, 83, 1.5f), y = randn(rows * C, 84), base = randn(rows * C, 85),
       Rs = randn(rows * C, 86);
  std::vector<float> o(rows * C), dy(rows * C), dl(rows);
  auto gate_loss = [&]() {
    o = base;
    be->sigmoid_gate_forward(o.data(), logit.data(), y.data(), rows, C);
    double L = 0;
    for (int64_t i = 0; i < rows * C; ++i) L += static_cast<double>(o[i]) * Rs[i];
    return L;
  };
  be->sigmoid_gate_backward(dy.data(), dl.data(), Rs.data(), logit.data(), y.data(), rows, C);
  auto cl = all_coords(rows);
  expect_grad_close(fd_grad(logit, cl, 1e-2f, gate_loss), dl, cl, 2e-3, 1e-3, "sigmoid dlogit");
  auto cy = all_coords(rows * C);
  expect_grad_close(fd_grad(y, cy, 1e-2f, gate_loss), dy, cy, 2e-3, 1e-3, "sigmoid dy");
}

// (c) dispatch then combine with gates summing to 1 per token is the identity, and so is the
// gradient of the composition.
// expert_owner inverts local_experts: every expert of every rank's range maps back to that rank
// and its index in the range.
TEST(ExpertOwnership, OwnerInvertsLocalExperts) {
  core::ModelConfig cfg;
  cfg.moe.n_experts = 12;
  for (int size : {1, 2, 3, 4, 6, 12}) {
    for (int rank = 0; rank < size; ++rank) {
      const core::ExpertRange mine = core::local_experts(cfg, rank, size);
      for (int64_t i = 0; i < mine.count; ++i) {
        const core::ExpertOwner o = core::expert_owner(cfg, mine.first + i, size);
        EXPECT_EQ(o.rank, rank);
        EXPECT_EQ(o.local, i);
      }
    }
  }
}

TEST(MoeKernels, DispatchCombineIsIdentity) {
  auto be = cpu();
  for (int64_t K : {1, 2, 3}) {
    const int64_t N = 29, E = 5, C = 16;
    Plan p = make_plan(*be, N, E, K, 91 + K, /*drop=*/false);
    ASSERT_EQ(p.rows, N * K);
    auto w = randn(N * K, 95);
    for (int64_t t = 0; t < N; ++t) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += std::exp(w[t * K + k]);
      for (int64_t k = 0; k < K; ++k)
        p.gates[t * K + k] = static_cast<float>(std::exp(w[t * K + k]) / s);
    }
    auto x = randn(N * C, 96), dout = randn(N * C, 97);
    std::vector<float> xp(N * K * C), out(N * C), dy(N * K * C), dg(N * K), dx(N * C);
    be->dispatch_forward(xp.data(), x.data(), p.pos.data(), N, K, C);
    be->combine_forward(out.data(), xp.data(), p.pos.data(), p.gates.data(), N, K, C);
    EXPECT_LT(max_rel_error(out.data(), x.data(), N * C), 1e-6) << "K=" << K;
    be->combine_backward(dy.data(), dg.data(), dout.data(), xp.data(), p.pos.data(), p.gates.data(),
                         N, K, C);
    be->dispatch_backward(dx.data(), dy.data(), p.pos.data(), N, K, C);
    EXPECT_LT(max_rel_error(dx.data(), dout.data(), N * C), 1e-6) << "K=" << K;
    // dgates[t,k] = <dout[t], x[t]> for every k
    for (int64_t t = 0; t < N; ++t) {
      double dot = 0;
      for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dout[t * C + c]) * x[t * C + c];
      for (int64_t k = 0; k < K; ++k) EXPECT_NEAR(dg[t * K + k], dot, 1e-5 * (1 + std::abs(dot)));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// the whole MoeLayer
// ---------------------------------------------------------------------------------------------

struct LayerCase {
  int64_t K;
  int64_t shared;  // shared expert width, 0: none (mixtral names), >0: qwen names
  bool renorm;
  bool empty_expert;  // the last expert's router row makes it lose every token
};

void PrintTo(const LayerCase& c, std::ostream* os) {
  *os << "K=" << c.K << " shared=" << c.shared << (c.renorm ? " renorm" : "")
      << (c.empty_expert ? " empty_expert" : "");
}

std::string case_name(const ::testing::TestParamInfo<LayerCase>& i) {
  return "K" + std::to_string(i.param.K) + (i.param.shared ? "_shared" : "") +
         (i.param.renorm ? "_renorm" : "") + (i.param.empty_expert ? "_empty" : "");
}

constexpr int64_t kN = 13, kC = 8, kE = 4, kI = 6, kLayer = 1;

core::ModelConfig layer_config(const LayerCase& c) {
  core::ModelConfig m;
  m.vocab_size = 16;
  m.d_model = kC;
  m.n_layers = 2;
  m.n_heads = 2;
  m.n_kv_heads = 1;
  m.max_seq_len = 16;
  m.moe.n_experts = kE;
  m.moe.top_k = c.K;
  m.moe.expert_size = kI;
  m.moe.normalize_topk = c.renorm;
  m.moe.shared_expert_size = c.shared;
  return m;
}

// The MoE layer in double precision, straight from the definitions, one token at a time.
struct RefLayer {
  const core::ModelConfig& cfg;
  const core::ParamTable& table;
  std::string pre;

  RefLayer(const core::ModelConfig& c, const core::ParamTable& t)
      : cfg(c),
        table(t),
        pre("model.layers." + std::to_string(kLayer) +
            (c.qwen_layout() ? ".mlp." : ".block_sparse_moe.")) {}

  const double* W(const std::vector<double>& p, const std::string& name) const {
    return p.data() + table.at(pre + name).offset;
  }
  std::string wname(int e, int which) const {  // 0 gate, 1 up, 2 down
    static const char* mix[] = {"w1", "w3", "w2"};
    static const char* qwen[] = {"gate_proj", "up_proj", "down_proj"};
    return "experts." + std::to_string(e) + "." + (cfg.qwen_layout() ? qwen : mix)[which] +
           ".weight";
  }
  // y[C] = Wd (silu(Wg x) * (Wu x))
  static void ffn(double* y, const double* x, const double* wg, const double* wu, const double* wd,
                  int64_t I) {
    std::vector<double> a(I);
    for (int64_t i = 0; i < I; ++i) {
      double g = 0, u = 0;
      for (int64_t c = 0; c < kC; ++c) {
        g += wg[i * kC + c] * x[c];
        u += wu[i * kC + c] * x[c];
      }
      a[i] = g * sigmoid(g) * u;
    }
    for (int64_t c = 0; c < kC; ++c) {
      double s = 0;
      for (int64_t i = 0; i < I; ++i) s += wd[c * I + i] * a[i];
      y[c] = s;
    }
  }

  struct Out {
    std::vector<double> out;
    std::vector<int32_t> idx;
    std::vector<int64_t> counts;
    double aux = 0, z = 0;
  };

  Out forward(const std::vector<double>& p, const std::vector<double>& x) const {
    const int64_t E = kE, K = cfg.moe.top_k;
    Out o;
    o.out.assign(kN * kC, 0.0);
    std::vector<double> logits(kN * E);
    const double* wr = W(p, "gate.weight");
    for (int64_t t = 0; t < kN; ++t)
      for (int64_t e = 0; e < E; ++e) {
        double s = 0;
        for (int64_t c = 0; c < kC; ++c) s += wr[e * kC + c] * x[t * kC + c];
        logits[t * E + e] = s;
      }
    RefRoute r = ref_router(logits, kN, E, K, cfg.moe.normalize_topk);
    o.idx = r.idx;
    o.counts.assign(E, 0);
    std::vector<double> y(kC);
    for (int64_t t = 0; t < kN; ++t) {
      for (int64_t k = 0; k < K; ++k) {
        const int e = r.idx[t * K + k];
        ++o.counts[e];
        ffn(y.data(), &x[t * kC], W(p, wname(e, 0)), W(p, wname(e, 1)), W(p, wname(e, 2)), kI);
        for (int64_t c = 0; c < kC; ++c) o.out[t * kC + c] += r.gates[t * K + k] * y[c];
      }
      if (cfg.moe.shared_expert_size > 0) {
        const int64_t S = cfg.moe.shared_expert_size;
        ffn(y.data(), &x[t * kC], W(p, "shared_expert.gate_proj.weight"),
            W(p, "shared_expert.up_proj.weight"), W(p, "shared_expert.down_proj.weight"), S);
        const double* wsg = W(p, "shared_expert_gate.weight");
        double l = 0;
        for (int64_t c = 0; c < kC; ++c) l += wsg[c] * x[t * kC + c];
        for (int64_t c = 0; c < kC; ++c) o.out[t * kC + c] += sigmoid(l) * y[c];
      }
    }
    for (int64_t e = 0; e < E; ++e) {
      double P = 0;
      for (int64_t t = 0; t < kN; ++t) P += r.probs[t * E + e];
      o.aux += static_cast<double>(o.counts[e]) / kN * (P / kN);
    }
    o.aux *= E;
    for (int64_t t = 0; t < kN; ++t) o.z += r.lse[t] * r.lse[t] / kN;
    return o;
  }
};

class MoeLayerTest : public ::testing::TestWithParam<LayerCase> {};

TEST_P(MoeLayerTest, ForwardAndGradientsMatchReferenceAndFiniteDifferences) {
  const LayerCase lc = GetParam();
  const core::ModelConfig cfg = layer_config(lc);
  const core::ParamTable table = core::make_param_table(cfg);
  auto be = cpu();
  const double coef_aux = 0.7, coef_z = 0.3;
  const std::string pre =
      "model.layers.1." + std::string(cfg.qwen_layout() ? "mlp." : "block_sparse_moe.");

  // parameters: N(0, 0.5) everywhere; inputs N(0, 1)
  std::vector<float> params = randn(table.total(), 1001 + lc.K * 10 + lc.shared, 0.5f);
  std::vector<float> x = randn(kN * kC, 1002);
  const int64_t empty = kE - 1;
  if (lc.empty_expert) {
    // every token has x[:,0] ~ 3 and the last expert's router row has -4 there: its logit is far
    // below the others, so it wins no token.
    for (int64_t t = 0; t < kN; ++t) x[t * kC] = 3.0f + 0.1f * x[t * kC];
    params[table.at(pre + "gate.weight").offset + empty * kC] = -4.0f;
  }
  const std::vector<float> R = randn(kN * kC, 1003);

  moe::MoeLayer layer(*be, cfg, table, kLayer, /*max_tokens=*/kN + 3);
  std::vector<float> out(kN * kC, NAN);
  layer.forward(out.data(), x.data(), params.data(), kN);
  const moe::MoeStats st = layer.stats();

  // forward against the double reference
  RefLayer ref(cfg, table);
  std::vector<double> pd(params.begin(), params.end()), xd(x.begin(), x.end());
  const auto r0 = ref.forward(pd, xd);
  EXPECT_LT(max_rel_error(out.data(), to_float(r0.out).data(), kN * kC, 1e-2), 2e-5);
  EXPECT_EQ(st.expert_counts, r0.counts);
  EXPECT_NEAR(st.aux_loss, r0.aux, 1e-5 * r0.aux);
  EXPECT_NEAR(st.z_loss, r0.z, 1e-5 * r0.z);
  EXPECT_EQ(std::accumulate(st.expert_counts.begin(), st.expert_counts.end(), int64_t{0}),
            kN * lc.K);
  if (lc.empty_expert) {
    EXPECT_EQ(st.expert_counts[empty], 0);
  }

  // backward with loss = sum(out * R) + a * aux + b * z; dx is written (=), grads accumulate
  std::vector<float> grads(table.total(), 0.f), dx(kN * kC, NAN);
  layer.backward(dx.data(), R.data(), x.data(), params.data(), grads.data(), kN,
                 static_cast<float>(coef_aux), static_cast<float>(coef_z));

  // gradients of the double reference by central differences (h = 1e-5), over x and every
  // parameter of the layer's MoE block; coordinates whose perturbation changes the routing are
  // skipped (the loss is not differentiable there) and must be rare.
  auto ref_loss = [&](const RefLayer::Out& o) {
    double L = coef_aux * o.aux + coef_z * o.z;
    for (int64_t i = 0; i < kN * kC; ++i) L += o.out[i] * R[i];
    return L;
  };
  int skipped = 0;
  auto ref_fd = [&](std::vector<double>& v, int64_t i) {
    const double h = 1e-5, v0 = v[i];
    v[i] = v0 + h;
    const auto op = ref.forward(pd, xd);
    v[i] = v0 - h;
    const auto om = ref.forward(pd, xd);
    v[i] = v0;
    if (op.idx != r0.idx || om.idx != r0.idx) {
      ++skipped;
      return std::numeric_limits<double>::quiet_NaN();
    }
    return (ref_loss(op) - ref_loss(om)) / (2 * h);
  };
  auto check = [&](std::vector<double>& v, int64_t base, int64_t n, const std::vector<float>& g,
                   const std::string& what) {
    std::vector<double> fd;
    std::vector<int64_t> coords;
    for (int64_t i = 0; i < n; ++i) {
      const double d = ref_fd(v, base + i);
      if (std::isnan(d)) continue;
      fd.push_back(d);
      coords.push_back(base + i);
    }
    expect_grad_close(fd, g, coords, 1e-3, 1e-4, what);
  };
  check(xd, 0, kN * kC, dx, "dx");
  int64_t moe_params = 0;
  for (const auto& s : table.specs()) {
    if (s.layer != kLayer || s.name.rfind(pre, 0) != 0) continue;
    moe_params += s.numel;
    check(pd, s.offset, s.numel, grads, s.name);
  }
  EXPECT_EQ(moe_params, kE * kC + kE * 3 * kI * kC + (lc.shared ? 3 * lc.shared * kC + kC : 0));
  EXPECT_LE(skipped, 2) << "too many coordinates sit on a routing boundary";

  // nothing outside the layer's MoE block is touched
  for (const auto& s : table.specs()) {
    if (s.layer == kLayer && s.name.rfind(pre, 0) == 0) continue;
    for (int64_t i = 0; i < s.numel; ++i) ASSERT_EQ(grads[s.offset + i], 0.f) << s.name;
  }
  // the idle expert's weights get exactly zero gradient; its router row does not
  if (lc.empty_expert) {
    for (int w = 0; w < 3; ++w) {
      const auto& s = table.at(pre + ref.wname(static_cast<int>(empty), w));
      for (int64_t i = 0; i < s.numel; ++i) ASSERT_EQ(grads[s.offset + i], 0.f) << s.name;
    }
    const auto& wr = table.at(pre + "gate.weight");
    double g2 = 0;
    for (int64_t c = 0; c < kC; ++c) g2 += std::abs(grads[wr.offset + empty * kC + c]);
    EXPECT_GT(g2, 0.0);
  }

  // finite differences of the float layer itself on a sample of coordinates (x, router, an
  // expert's w1 and w2, the shared expert and its gate), loss from out and stats()
  std::vector<float> o2(kN * kC);
  auto layer_loss = [&]() {
    layer.forward(o2.data(), x.data(), params.data(), kN);
    double L = coef_aux * layer.stats().aux_loss + coef_z * layer.stats().z_loss;
    for (int64_t i = 0; i < kN * kC; ++i) L += static_cast<double>(o2[i]) * R[i];
    return L;
  };
  const float eps = 1e-2f;
  auto routing_stable = [&](std::vector<float>& v, std::vector<double>& vd, int64_t i) {
    bool ok = true;
    for (float sgn : {-1.f, 1.f}) {
      const double v0 = vd[i];
      vd[i] = static_cast<double>(v[i] + sgn * eps);
      ok = ok && ref.forward(pd, xd).idx == r0.idx;
      vd[i] = v0;
    }
    return ok;
  };
  auto sample = [&](std::vector<float>& v, std::vector<double>& vd, int64_t base, int64_t n,
                    const std::vector<float>& g, const std::string& what) {
    std::vector<int64_t> coords;
    for (int64_t i = 0; i < n && coords.size() < 5; i += std::max<int64_t>(1, n / 5))
      if (routing_stable(v, vd, base + i)) coords.push_back(base + i);
    ASSERT_GE(coords.size(), 3u) << what;
    expect_grad_close(fd_grad(v, coords, eps, layer_loss), g, coords, 1e-2, 1e-2,
                      "float fd " + what);
  };
  sample(x, xd, 0, kN * kC, dx, "dx");
  const auto& wr = table.at(pre + "gate.weight");
  sample(params, pd, wr.offset, wr.numel, grads, wr.name);
  for (int w : {0, 2}) {
    const auto& s = table.at(pre + ref.wname(0, w));
    sample(params, pd, s.offset, s.numel, grads, s.name);
  }
  if (lc.shared) {
    for (const char* n : {"shared_expert.up_proj.weight", "shared_expert_gate.weight"}) {
      const auto& s = table.at(pre + n);
      sample(params, pd, s.offset, s.numel, grads, s.name);
    }
  }

  // backward accumulates parameter gradients and rewrites dx
  layer.forward(out.data(), x.data(), params.data(), kN);
  std::vector<float> grads2 = grads, dx2(kN * kC, NAN);
  layer.backward(dx2.data(), R.data(), x.data(), params.data(), grads2.data(), kN,
                 static_cast<float>(coef_aux), static_cast<float>(coef_z));
  EXPECT_LT(max_rel_error(dx2.data(), dx.data(), kN * kC), 1e-6);
  for (int64_t i = 0; i < table.total(); ++i)
    ASSERT_NEAR(grads2[i], 2 * grads[i], 1e-6 * (1 + std::abs(grads[i])));
}

INSTANTIATE_TEST_SUITE_P(
    Moe, MoeLayerTest,
    ::testing::Values(LayerCase{2, 0, true, false}, LayerCase{2, 0, false, false},
                      LayerCase{1, 0, false, false}, LayerCase{1, 0, true, true},
                      LayerCase{2, 5, true, false}, LayerCase{2, 5, true, true},
                      LayerCase{1, 5, false, false}, LayerCase{2, 0, false, true}),
    case_name);

// Uniform router (zero weights): probabilities 1/E, ties send every token to experts 0..K-1, and
// the balancing loss of balanced probabilities is K.
TEST(MoeLayer, UniformRouterTiesAndAuxLoss) {
  LayerCase lc{2, 0, true, false};
  core::ModelConfig cfg = layer_config(lc);
  const core::ParamTable table = core::make_param_table(cfg);
  auto be = cpu();
  std::vector<float> params = randn(table.total(), 7, 0.5f);
  const auto& wr = table.at("model.layers.1.block_sparse_moe.gate.weight");
  std::fill(params.begin() + wr.offset, params.begin() + wr.offset + wr.numel, 0.f);
  auto x = randn(kN * kC, 8);
  moe::MoeLayer layer(*be, cfg, table, kLayer, kN);
  std::vector<float> out(kN * kC);
  layer.forward(out.data(), x.data(), params.data(), kN);
  // (checked element by element: GCC 12.2 with -march=native miscompiles the constant vector
  // {13, 13, 0, 0} of int64 into a broadcast of 13)
  const auto& counts = layer.stats().expert_counts;
  ASSERT_EQ(counts.size(), 4u);
  EXPECT_EQ(counts[0], kN);
  EXPECT_EQ(counts[1], kN);
  EXPECT_EQ(counts[2], 0);
  EXPECT_EQ(counts[3], 0);
  EXPECT_NEAR(layer.stats().aux_loss, 2.0, 1e-6);
  EXPECT_NEAR(layer.stats().z_loss, std::log(4.0) * std::log(4.0), 1e-5);
  EXPECT_THROW(layer.forward(out.data(), x.data(), params.data(), kN + 1), Error);
}

// aux_scope global at the layer (MoeLayer::set_aux_counts): two micro-batches of different sizes,
// each weighted 1/2 as the trainer weights them, with the step's counts give the step's aux loss
// E sum_e (counts_e / Nt) * (sum_t p[t,e] / Nt) (counts constant) and its router gradient, against
// a double reference with central differences, and equal one micro-batch of all the tokens. Under
// the micro-batch scope the same two micro-batches give another gradient (the test can fail).
TEST(MoeLayer, GlobalAuxCountsMatchReferenceAndOneMicroBatch) {
  const core::ModelConfig cfg = layer_config(LayerCase{2, 0, true, false});
  const core::ParamTable table = core::make_param_table(cfg);
  auto be = cpu();
  const std::vector<float> params = randn(table.total(), 11, 0.5f);
  constexpr int64_t N1 = kN, N2 = 9, Nt = N1 + N2;
  const std::vector<float> x = randn(Nt * kC, 12);  // micro-batch 1: rows [0, N1), 2: [N1, Nt)
  const std::pair<int64_t, int64_t> micro[] = {{0, N1}, {N1, N2}};
  const double coef = 0.7;
  const auto& wr = table.at("model.layers.1.block_sparse_moe.gate.weight");
  moe::MoeLayer layer(*be, cfg, table, kLayer, Nt);
  std::vector<float> out(Nt * kC), dx(Nt * kC);
  const std::vector<float> dout(Nt * kC, 0.f);  // the aux loss alone
  // the step's counts, from forwards of both micro-batches (the trainer's pre-pass)
  std::vector<int64_t> counts(kE, 0);
  for (auto [first, n] : micro) {
    layer.forward(out.data(), x.data() + first * kC, params.data(), n);
    for (int64_t e = 0; e < kE; ++e) counts[e] += layer.stats().expert_counts[e];
  }
  auto two_micro_batches = [&](std::vector<float>& grads) {
    double aux = 0;
    for (auto [first, n] : micro) {
      layer.forward(out.data(), x.data() + first * kC, params.data(), n);
      aux += layer.stats().aux_loss / 2;
      layer.backward(dx.data(), dout.data(), x.data() + first * kC, params.data(), grads.data(), n,
                     static_cast<float>(coef / 2), 0.f);
    }
    return aux;
  };
  std::vector<float> g_micro(table.total(), 0.f), g_two(table.total(), 0.f), g_one(table.total(), 0.f);
  two_micro_batches(g_micro);  // micro_batch scope: each micro-batch's own counts
  layer.set_aux_counts(counts.data(), Nt, 2);
  const double recomputed = layer.stats().aux_loss;  // micro-batch 2's forward, under the new counts
  const double aux_two = two_micro_batches(g_two);
  EXPECT_EQ(recomputed, layer.stats().aux_loss);
  layer.set_aux_counts(nullptr, 0, 0);  // one micro-batch of all the tokens, its own counts
  layer.forward(out.data(), x.data(), params.data(), Nt);
  EXPECT_EQ(layer.stats().expert_counts, counts);
  const double aux_one = layer.stats().aux_loss;
  layer.backward(dx.data(), dout.data(), x.data(), params.data(), g_one.data(), Nt, static_cast<float>(coef), 0.f);

  // double reference over the router weight w, counts held constant
  std::vector<double> w(params.begin() + wr.offset, params.begin() + wr.offset + wr.numel);
  auto ref_aux = [&]() {
    double s = 0;
    for (int64_t t = 0; t < Nt; ++t) {
      double l[kE], mx = -1e300, z = 0;
      for (int64_t e = 0; e < kE; ++e) {
        l[e] = 0;
        for (int64_t c = 0; c < kC; ++c) l[e] += w[e * kC + c] * x[t * kC + c];
        mx = std::max(mx, l[e]);
      }
      for (int64_t e = 0; e < kE; ++e) z += std::exp(l[e] - mx);
      for (int64_t e = 0; e < kE; ++e)
        s += static_cast<double>(counts[e]) / Nt * (std::exp(l[e] - mx) / z / Nt);
    }
    return kE * s;
  };
  const double aux_ref = ref_aux();
  EXPECT_NEAR(aux_two, aux_ref, 1e-5 * aux_ref);
  EXPECT_NEAR(aux_one, aux_ref, 1e-5 * aux_ref);
  std::vector<double> fd;
  std::vector<int64_t> coords;
  for (int64_t i = 0; i < wr.numel; ++i) {
    const double h = 1e-5, w0 = w[i];
    w[i] = w0 + h;
    const double up = ref_aux();
    w[i] = w0 - h;
    const double dn = ref_aux();
    w[i] = w0;
    fd.push_back(coef * (up - dn) / (2 * h));
    coords.push_back(wr.offset + i);
  }
  expect_grad_close(fd, g_two, coords, 1e-3, 1e-4, "global aux dWr, two micro-batches");
  expect_grad_close(fd, g_one, coords, 1e-3, 1e-4, "aux dWr, one micro-batch");
  double scale = 0, differs = 0;
  for (double v : fd) scale = std::max(scale, std::abs(v));
  for (int64_t i = 0; i < table.total(); ++i) {
    ASSERT_NEAR(g_two[i], g_one[i], 1e-5 * std::abs(g_one[i]) + 1e-6 * scale) << i;
    differs = std::max(differs, std::abs(static_cast<double>(g_micro[i]) - g_one[i]));
  }
  EXPECT_GT(differs, 1e-2 * scale) << "micro-batch scope should differ from one micro-batch";
}

}  // namespace
}  // namespace switchyard
