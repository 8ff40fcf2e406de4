// tests/unit/test_expert_decay.cpp: dynamic expert weight decay (optim/expert_decay.h, optim/adamw.h).
// The controller's EMA, alpha and clip against hand-computed values; AdamW's per-expert and
// per-router-row decay against an independent computation (zero gradients: p' = p * (1 - lr*wd*m)
// exactly) and against one backend call per tensor/row with wd * m; static mode against the
// plain runs of param_decays; the config keys' validation.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/config.h"
#include "core/error.h"
#include "core/params.h"
#include "optim/adamw.h"
#include "optim/expert_decay.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using core::ExpertDecayMode;
using core::ExpertDecayTarget;

core::ExpertDecayConfig decay_config(double alpha, double ema, double min, double max) {
  core::ExpertDecayConfig c;
  c.mode = ExpertDecayMode::dynamic;
  c.alpha = alpha;
  c.ema = ema;
  c.min = min;
  c.max = max;
  return c;
}

void expect_values(const std::vector<double>& got, const std::vector<double>& want, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-15) << what << " [" << i << "]";
}

// ---------------------------------------------------------------- the controller

TEST(ExpertDecay, EmaAndClipByHand) {
  optim::ExpertDecay d(decay_config(1.0, 0.5, 0.5, 4.0), 1, 4);
  expect_values(d.loads(), {0.25, 0.25, 0.25, 0.25}, "initial loads 1/E");
  expect_values(d.multipliers(), {1, 1, 1, 1}, "initial multipliers");
  d.update({6, 2, 0, 0});  // shares .75 .25 0 0
  expect_values(d.loads(), {0.5, 0.25, 0.125, 0.125}, "loads after step 1");
  expect_values(d.multipliers(), {2.0, 1.0, 0.5, 0.5}, "x E, clipped below at 0.5");
  d.update({0, 0, 0, 8});  // shares 0 0 0 1
  expect_values(d.loads(), {0.25, 0.125, 0.0625, 0.5625}, "loads after step 2");
  expect_values(d.multipliers(), {1.0, 0.5, 0.5, 2.25}, "multipliers after step 2");
  using Range = std::array<double, 2>;
  EXPECT_EQ(d.multiplier_ranges(), std::vector<Range>({Range{0.5, 2.25}}));
}

TEST(ExpertDecay, AlphaAndUpperClip) {
  optim::ExpertDecay d(decay_config(2.0, 0.5, 0.5, 3.0), 1, 4);
  d.update({6, 2, 0, 0});  // loads .5 .25 .125 .125 -> (load * 4)^2 = 4 1 .25 .25
  expect_values(d.multipliers(), {3.0, 1.0, 0.5, 0.5}, "alpha 2, clip [0.5, 3]");
  optim::ExpertDecay half(decay_config(0.5, 0.5, 0.1, 10.0), 1, 4);
  half.update({6, 2, 0, 0});
  expect_values(half.multipliers(), {std::sqrt(2.0), 1.0, std::sqrt(0.5), std::sqrt(0.5)}, "alpha 0.5");
  optim::ExpertDecay flat(decay_config(0.0, 0.5, 0.5, 4.0), 1, 4);
  flat.update({8, 0, 0, 0});
  expect_values(flat.multipliers(), {1, 1, 1, 1}, "alpha 0: no dynamic decay");
}

TEST(ExpertDecay, EmaZeroFollowsTheLastStepAndLayersAreIndependent) {
  optim::ExpertDecay d(decay_config(1.0, 0.0, 0.25, 4.0), 2, 2);
  d.update({3, 1, 0, 0});  // layer 1 had no slots: keeps 1/E
  expect_values(d.loads(), {0.75, 0.25, 0.5, 0.5}, "ema 0; empty layer kept");
  expect_values(d.multipliers(), {1.5, 0.5, 1.0, 1.0}, "multipliers");
  d.update({1, 3, 2, 6});
  expect_values(d.loads(), {0.25, 0.75, 0.25, 0.75}, "second step");
  using Range = std::array<double, 2>;
  EXPECT_EQ(d.multiplier_ranges(), std::vector<Range>({Range{0.5, 1.5}, Range{0.5, 1.5}}));
}

TEST(ExpertDecay, SetLoadsChecksTheSize) {
  optim::ExpertDecay d(decay_config(1.0, 0.9, 0.5, 4.0), 2, 4);
  d.set_loads({0.1, 0.2, 0.3, 0.4, 0.4, 0.3, 0.2, 0.1});
  EXPECT_EQ(d.loads()[6], 0.2);
  try {
    d.set_loads({0.25, 0.25, 0.25, 0.25});
    ADD_FAILURE() << "no error for 4 loads of 2 x 4";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_HAS(std::string(e.what()), "4 loads, this model needs 8");
  }
}

// ---------------------------------------------------------------- AdamW with multipliers

// A small model (2 MoE layers after one dense layer, 4 experts) on `ep_rank` of `ep_size`, the
// multipliers 1 + 0.25 * (MoE layer * E + e) and random parameters.
struct Fixture {
  core::ModelConfig model = test::small_moe_model(3);
  core::OptimConfig optim;
  core::ParamTable table;
  std::vector<double> mult;
  std::vector<float> params;
  Fixture(ExpertDecayMode mode, ExpertDecayTarget target, int ep_rank = 0, int ep_size = 1) {
    model.first_dense_layers = 1;
    model.dense_ffn_size = 48;
    optim.weight_decay = 0.1;
    optim.expert_decay.mode = mode;
    optim.expert_decay.apply_to = target;
    table = core::make_param_table(model, ep_rank, ep_size);
    for (int i = 0; i < 2 * 4; ++i) mult.push_back(1.0 + 0.25 * i);
    params = test::randn(table.total(), 11, 0.5f);
  }
  // the multiplier index of a tensor's expert, or of router row `row`
  size_t index(const core::ParamSpec& p, int64_t expert) const {
    return static_cast<size_t>((p.layer - model.first_dense_layers) * model.moe.n_experts + expert);
  }
};

// With zero gradients the Adam term is exactly 0, so one step leaves p * (1 - lr * wd_tensor): the
// decay each tensor (each router row) got, computed here from the table alone.
void check_zero_gradient_step(ExpertDecayTarget target, bool decay_router, int ep_rank, int ep_size) {
  Fixture f(ExpertDecayMode::dynamic, target, ep_rank, ep_size);
  f.optim.decay_router = decay_router;
  auto be = core::make_cpu_backend(2);
  optim::AdamW adamw(*be, f.table, f.optim);
  adamw.set_decay_multipliers(f.mult);
  std::vector<float> p = f.params, g(p.size(), 0.f);
  const float lr = 0.01f;
  adamw.step(p.data(), g.data(), lr);
  const bool experts = target != ExpertDecayTarget::router, router = target != ExpertDecayTarget::experts;
  int checked_scaled = 0;
  for (const auto& s : f.table.specs()) {
    const int64_t rows = s.kind == core::ParamKind::router ? s.shape[0] : 1, width = s.numel / rows;
    for (int64_t r = 0; r < rows; ++r) {
      double wd = core::param_decays(s, f.optim) ? f.optim.weight_decay : 0.0;
      if (s.kind == core::ParamKind::expert && experts) wd = f.optim.weight_decay * f.mult[f.index(s, s.expert)];
      if (s.kind == core::ParamKind::router && router) wd = f.optim.weight_decay * f.mult[f.index(s, r)];
      checked_scaled += wd != 0.0 && wd != f.optim.weight_decay;
      const float keep = 1.0f - lr * static_cast<float>(wd);
      for (int64_t i = s.offset + r * width; i < s.offset + (r + 1) * width; ++i)
        ASSERT_EQ(p[static_cast<size_t>(i)], f.params[static_cast<size_t>(i)] * keep)
            << s.name << " row " << r << " wd " << wd;
    }
  }
  EXPECT_GT(checked_scaled, 0);
}

TEST(ExpertDecay, AdamwZeroGradientExperts) { check_zero_gradient_step(ExpertDecayTarget::experts, false, 0, 1); }
TEST(ExpertDecay, AdamwZeroGradientRouterRowsWithoutDecayRouter) {
  check_zero_gradient_step(ExpertDecayTarget::router, false, 0, 1);
}
TEST(ExpertDecay, AdamwZeroGradientBoth) { check_zero_gradient_step(ExpertDecayTarget::both, true, 0, 1); }
TEST(ExpertDecay, AdamwZeroGradientExpertParallelRank) {  // experts 2, 3 of 4, named by global id
  check_zero_gradient_step(ExpertDecayTarget::both, false, 1, 2);
}

// Two steps with random gradients: AdamW with multipliers equals one backend call per tensor
// (router: per row) with weight decay wd * m (tensor and row widths are multiples of the vector
// width here, so the split does not move elements between the vector body and the scalar tail).
TEST(ExpertDecay, AdamwEqualsPerTensorCalls) {
  Fixture f(ExpertDecayMode::dynamic, ExpertDecayTarget::both);
  auto be = core::make_cpu_backend(2);
  optim::AdamW adamw(*be, f.table, f.optim);
  adamw.set_decay_multipliers(f.mult);
  // embeddings, dense layer (norm, attention, norm, MLP), per MoE layer (norm, attention, norm, 4
  // router rows, 4 experts), final norm, lm head
  EXPECT_EQ(adamw.calls_per_step(), 1u + 4 + 2 * (3 + 4 + 4) + 2);
  const size_t n = f.params.size();
  std::vector<float> p = f.params, pr = f.params, m(n, 0.f), v(n, 0.f);
  const float lr = 0.01f, b1 = static_cast<float>(f.optim.beta1), b2 = static_cast<float>(f.optim.beta2);
  for (int t = 1; t <= 2; ++t) {
    const std::vector<float> g = test::randn(static_cast<int64_t>(n), 100 + t, 0.1f);
    adamw.step(p.data(), g.data(), lr);
    const float bc1 = static_cast<float>(1.0 - std::pow(f.optim.beta1, t)),
                bc2 = static_cast<float>(1.0 - std::pow(f.optim.beta2, t));
    for (const auto& s : f.table.specs()) {
      const int64_t rows = s.kind == core::ParamKind::router ? s.shape[0] : 1, width = s.numel / rows;
      for (int64_t r = 0; r < rows; ++r) {
        double wd = core::param_decays(s, f.optim) ? f.optim.weight_decay : 0.0;
        if (s.kind == core::ParamKind::expert) wd = f.optim.weight_decay * f.mult[f.index(s, s.expert)];
        if (s.kind == core::ParamKind::router) wd = f.optim.weight_decay * f.mult[f.index(s, r)];
        const int64_t b = s.offset + r * width;
        be->adamw_update(pr.data() + b, g.data() + b, m.data() + b, v.data() + b, width, 1.f, lr, b1, b2,
                         static_cast<float>(f.optim.eps), static_cast<float>(wd), bc1, bc2);
      }
    }
  }
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(p[i], pr[i]) << "element " << i;
}

// Static mode: the maximal runs of param_decays, as before dynamic decay existed (one call per
// run); dynamic mode with every multiplier 1 and apply_to experts computes the same bits.
TEST(ExpertDecay, StaticModeIsThePlainRuns) {
  Fixture f(ExpertDecayMode::fixed, ExpertDecayTarget::both);
  auto be = core::make_cpu_backend(2);
  optim::AdamW adamw(*be, f.table, f.optim);
  size_t runs = 0;
  bool last = false;
  for (size_t i = 0; i < f.table.size(); ++i) {
    const bool d = core::param_decays(f.table[i], f.optim);
    runs += i == 0 || d != last;
    last = d;
  }
  EXPECT_EQ(adamw.calls_per_step(), runs);
  Fixture g(ExpertDecayMode::dynamic, ExpertDecayTarget::experts);
  optim::AdamW dyn(*be, g.table, g.optim);
  dyn.set_decay_multipliers(std::vector<double>(g.mult.size(), 1.0));
  std::vector<float> ps = f.params, pd = g.params;
  for (int t = 1; t <= 2; ++t) {
    const std::vector<float> grad = test::randn(static_cast<int64_t>(ps.size()), 200 + t, 0.1f);
    adamw.step(ps.data(), grad.data(), 0.01);
    dyn.step(pd.data(), grad.data(), 0.01);
  }
  for (size_t i = 0; i < ps.size(); ++i) ASSERT_EQ(ps[i], pd[i]) << "element " << i;
}

// ---------------------------------------------------------------- config

std::string config_error(const std::vector<std::string>& overrides) {
  try {
    core::parse_experiment_config("", "x.yaml", overrides);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    return e.what();
  }
  ADD_FAILURE() << "accepted";
  return {};
}

TEST(ExpertDecay, ConfigKeysAndValidation) {
  const auto c = core::parse_experiment_config("", "x.yaml",
      {"optim.expert_decay.mode=dynamic", "optim.expert_decay.alpha=2", "optim.expert_decay.ema=0",
       "optim.expert_decay.min=0.25", "optim.expert_decay.max=8", "optim.expert_decay.apply_to=both"});
  EXPECT_EQ(c.optim.expert_decay.mode, ExpertDecayMode::dynamic);
  EXPECT_EQ(c.optim.expert_decay.apply_to, ExpertDecayTarget::both);
  EXPECT_EQ(c.optim.expert_decay.max, 8.0);
  EXPECT_EQ(core::parse_experiment_config("", "x.yaml").optim.expert_decay.mode, ExpertDecayMode::fixed);
  EXPECT_HAS(core::to_yaml(c), "mode: \"dynamic\"");
  EXPECT_HAS(config_error({"optim.expert_decay.min=2", "optim.expert_decay.max=1"}),
             "optim.expert_decay.max: 1 is smaller than optim.expert_decay.min = 2");
  EXPECT_HAS(config_error({"optim.expert_decay.ema=1"}), "optim.expert_decay.ema: must be in [0, 1), got 1");
  EXPECT_HAS(config_error({"optim.expert_decay.ema=-0.1"}), "optim.expert_decay.ema");
  EXPECT_HAS(config_error({"optim.expert_decay.min=0"}), "optim.expert_decay.min: must be positive");
  EXPECT_HAS(config_error({"optim.expert_decay.alpha=-1"}), "optim.expert_decay.alpha: must be >= 0");
  EXPECT_HAS(config_error({"optim.expert_decay.mode=sometimes"}), "optim.expert_decay.mode");
  EXPECT_HAS(config_error({"optim.expert_decay.apply_to=gates"}), "optim.expert_decay.apply_to");
}

}  // namespace
}  // namespace switchyard
