// tests/unit/test_moe.cpp: MoE kernels (SwiGLU, sigmoid gate, router, routing plan, dispatch,
// combine) against naive double references and finite-difference checks of their backward passes
// (the whole MoeLayer: test_moe_layer.cpp).
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
#include "tests/unit/moe_reference.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using test::all_coords;
using test::cpu;
using test::expect_grad_close;
using test::fd_grad;
using test::max_rel_error;
using test::randn;
using test::RefRoute;
using test::ref_router;
using test::sigmoid;
using test::to_float;

// ---------------------------------------------------------------------------------------------
// double references of the kernels
// ---------------------------------------------------------------------------------------------

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

}  // namespace
}  // namespace switchyard
