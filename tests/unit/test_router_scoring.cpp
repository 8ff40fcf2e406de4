// tests/unit/test_router_scoring.cpp: router scoring (softmax | sigmoid) and the aux-loss-free
// selection bias (moe/router.h): a zero bias is bit for bit no bias; sigmoid scoring and a bias
// against a double reference; the backward against finite differences; ties; the bias update
// from summed counts; the whole model's bias, once per call whatever the micro-batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "moe/router.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using core::RouterOptions;
using core::RouterScoring;
using test::randn;

struct Route {
  std::vector<float> probs, lse, gates;
  std::vector<int32_t> idx;
};

Route route(core::Backend& be, const std::vector<float>& logits, int64_t N, int64_t E, int64_t K,
            const RouterOptions& opt) {
  Route r{std::vector<float>(N * E), std::vector<float>(N), std::vector<float>(N * K),
          std::vector<int32_t>(N * K)};
  be.router_topk(r.probs.data(), r.lse.data(), r.idx.data(), r.gates.data(), logits.data(), N, E,
                 K, opt);
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(RouterScoring, SoftmaxWithZeroBiasIsBitIdenticalToNoBias) {
  auto be = core::make_cpu_backend(2);
  const int64_t N = 200, E = 8, K = 2;
  auto logits = randn(N * E, 7, 2.0f);
  for (bool renorm : {true, false}) {
    const std::vector<float> zero(E, 0.f);
    const Route a = route(*be, logits, N, E, K, {RouterScoring::softmax, renorm, nullptr});
    const Route b = route(*be, logits, N, E, K, {RouterScoring::softmax, renorm, zero.data()});
    EXPECT_TRUE(same_bits(a.probs, b.probs));
    EXPECT_TRUE(same_bits(a.lse, b.lse));
    EXPECT_TRUE(same_bits(a.gates, b.gates));
    EXPECT_EQ(a.idx, b.idx);
  }
}

// The double reference: scores, selection by score + bias (stable: ties to the lower index),
// gates = selected scores (renormalised), probs = softmax or s / sum s.
Route reference(const std::vector<float>& logits, const std::vector<float>& bias, int64_t N,
                int64_t E, int64_t K, RouterScoring scoring, bool renorm) {
  Route r{std::vector<float>(N * E), std::vector<float>(N), std::vector<float>(N * K),
          std::vector<int32_t>(N * K)};
  for (int64_t t = 0; t < N; ++t) {
    std::vector<double> score(E), key(E);
    double mx = -INFINITY, se = 0, ss = 0;
    for (int64_t e = 0; e < E; ++e) mx = std::max(mx, double(logits[t * E + e]));
    for (int64_t e = 0; e < E; ++e) se += std::exp(logits[t * E + e] - mx);
    const double lse = mx + std::log(se);
    for (int64_t e = 0; e < E; ++e) {
      const double l = logits[t * E + e];
      score[e] = scoring == RouterScoring::sigmoid ? 1 / (1 + std::exp(-l)) : std::exp(l - lse);
      ss += score[e];
      key[e] = score[e] + (bias.empty() ? 0.0 : bias[e]);
    }
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return key[a] > key[b]; });
    double gs = 0;
    for (int64_t k = 0; k < K; ++k) gs += score[order[k]];
    for (int64_t k = 0; k < K; ++k) {
      r.idx[t * K + k] = order[k];
      r.gates[t * K + k] = static_cast<float>(score[order[k]] / (renorm ? gs : 1.0));
    }
    for (int64_t e = 0; e < E; ++e)
      r.probs[t * E + e] = static_cast<float>(scoring == RouterScoring::sigmoid ? score[e] / ss : score[e]);
    r.lse[t] = static_cast<float>(lse);
  }
  return r;
}

struct Case {
  RouterScoring scoring;
  bool renorm, bias;
};

class RouterScoringCases : public ::testing::TestWithParam<Case> {};

TEST_P(RouterScoringCases, ForwardMatchesReferenceAndBackwardMatchesFiniteDifferences) {
  auto be = core::make_cpu_backend(2);
  const auto [scoring, renorm, with_bias] = GetParam();
  const int64_t N = 11, E = 6, K = 2;
  auto logits = randn(N * E, 21, 1.5f);
  std::vector<float> bias;
  if (with_bias) {
    bias = randn(E, 22, 0.3f);
    bias[2] = 1.0f;  // expert 2 is favoured: the bias must change some selections
  }
  const RouterOptions opt{scoring, renorm, with_bias ? bias.data() : nullptr};
  Route r = route(*be, logits, N, E, K, opt);
  const Route ref = reference(logits, bias, N, E, K, scoring, renorm);
  EXPECT_EQ(r.idx, ref.idx);
  EXPECT_LT(test::max_rel_error(r.gates.data(), ref.gates.data(), N * K, 1e-6), 1e-5);
  EXPECT_LT(test::max_rel_error(r.probs.data(), ref.probs.data(), N * E, 1e-6), 1e-5);
  EXPECT_LT(test::max_rel_error(r.lse.data(), ref.lse.data(), N, 1e-6), 1e-5);
  if (with_bias) {
    const Route unbiased = reference(logits, {}, N, E, K, scoring, renorm);
    EXPECT_NE(r.idx, unbiased.idx) << "the bias changed no selection: the test cannot fail";
  }

  // L = sum dgates*gates + sum_te a_e*probs + z * sum lse^2, d/dlogits against finite differences
  auto dgates = randn(N * K, 23), a = randn(E, 24);
  const float z = 0.3f;
  std::vector<float> dl(N * E);
  be->router_backward(dl.data(), dgates.data(), logits.data(), r.probs.data(), r.lse.data(),
                      r.idx.data(), r.gates.data(), a.data(), z, N, E, K, opt);
  const auto idx0 = r.idx;
  int checked = 0;
  for (int64_t i = 0; i < N * E; ++i) {
    double L[2];
    bool flipped = false;
    const float v0 = logits[i], eps = 1e-2f;
    for (int side = 0; side < 2; ++side) {
      logits[i] = v0 + (side ? -eps : eps);
      const Route q = route(*be, logits, N, E, K, opt);
      flipped |= q.idx != idx0;
      double s = 0;
      for (int64_t j = 0; j < N * K; ++j) s += double(dgates[j]) * q.gates[j];
      for (int64_t t = 0; t < N; ++t) {
        for (int64_t e = 0; e < E; ++e) s += double(a[e]) * q.probs[t * E + e];
        s += z * double(q.lse[t]) * q.lse[t];
      }
      L[side] = s;
    }
    logits[i] = v0;
    if (flipped) continue;  // not differentiable across a change of selection
    ++checked;
    const double fd = (L[0] - L[1]) / (2.0 * eps);
    EXPECT_NEAR(dl[i], fd, 3e-3 + 3e-3 * std::abs(fd)) << "logit " << i;
  }
  EXPECT_GE(checked, N * E - 6);
}

INSTANTIATE_TEST_SUITE_P(Moe, RouterScoringCases,
                         ::testing::Values(Case{RouterScoring::sigmoid, true, false},
                                           Case{RouterScoring::sigmoid, false, false},
                                           Case{RouterScoring::sigmoid, true, true},
                                           Case{RouterScoring::sigmoid, false, true},
                                           Case{RouterScoring::softmax, true, true},
                                           Case{RouterScoring::softmax, false, true}));

TEST(RouterScoring, BiasTiesGoToTheLowerIndexAndGatesIgnoreTheBias) {
  auto be = core::make_cpu_backend(1);
  const int64_t E = 4, K = 2;
  const std::vector<float> logits = {0, 0, 0, 0};
  const std::vector<float> bias = {0.f, 0.5f, 0.f, 0.5f};  // experts 1 and 3 tie above 0 and 2
  for (auto scoring : {RouterScoring::softmax, RouterScoring::sigmoid}) {
    const Route r = route(*be, logits, 1, E, K, {scoring, false, bias.data()});
    EXPECT_EQ(r.idx, (std::vector<int32_t>{1, 3}));
    const float score = scoring == RouterScoring::sigmoid ? 0.5f : 0.25f;
    EXPECT_EQ(r.gates, (std::vector<float>{score, score}));
  }
}

TEST(RouterScoring, BiasUpdateStepsTowardsTheMeanLoad) {
  std::vector<float> b = {0.f, 0.f, 0.f, 0.1f};
  const std::vector<int64_t> load = {10, 30, 20, 20};  // mean 20
  moe::update_selection_bias(b.data(), load.data(), 4, 0.25);
  EXPECT_EQ(b, (std::vector<float>{0.25f, -0.25f, 0.f, 0.1f}));
  // counts summed over micro-batches give the same step as the whole window at once
  std::vector<float> b1(4, 0.f);
  const std::vector<int64_t> m1 = {4, 1, 2, 1}, m2 = {0, 6, 1, 1};
  std::vector<int64_t> sum(4);
  for (int e = 0; e < 4; ++e) sum[e] = m1[e] + m2[e];
  moe::update_selection_bias(b1.data(), sum.data(), 4, 1e-3);
  EXPECT_EQ(b1, (std::vector<float>{0.f, -1e-3f, 1e-3f, 1e-3f}));
}

}  // namespace
}  // namespace switchyard
