// tests/unit/test_checkpointing.cpp: activation checkpointing aligned with gradient accumulation.
//  - none / full / selective give bit-identical gradients, losses and expert-load counts (the
//    recomputation replays the saved routing plan with the forward's kernels and weights), in fp32
//    and in the mixed precisions, over a 2-micro-batch accumulation window;
//  - k micro-batches of b sequences accumulate to the gradient of one micro-batch of k*b (1e-6
//    relative in fp32), under every policy;
//  - the activation storage shrinks as the policy recomputes more, is allocated once (the same
//    buffers for every micro-batch), and equals what `switchyard plan` predicts;
//  - ActivationStore: shared storage and growth repoint every user.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/activations.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/precision.h"
#include "launch/plan.h"
#include "moe/model.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

using core::Recompute;

struct Case {
  std::string name;
  core::ModelConfig model;
};

core::ModelConfig mixtral() {
  core::ModelConfig m = test::small_moe_model(3);
  m.moe.aux_loss_coef = 0.02;
  m.init_std = 0.3;  // large enough that routing is decisive and every expert gets tokens
  return m;
}

core::ModelConfig qwen() {
  core::ModelConfig m = mixtral();
  m.qkv_bias = true;
  m.first_dense_layers = 1;
  m.dense_ffn_size = 40;
  m.moe.normalize_topk = false;
  m.moe.shared_expert_size = 20;
  return m;
}

struct Result {
  std::vector<float> grads;
  std::vector<double> losses;
  std::vector<std::vector<int64_t>> counts;  // summed over the window
  int64_t activation_bytes = 0;
};

// One accumulation window of `micro` micro-batches of B sequences from a fixed token stream.
Result run_window(const core::ModelConfig& cfg, Recompute r, const std::string& precision, int64_t micro,
                  int64_t B, int64_t T) {
  auto be = core::make_cpu_backend(2);
  moe::ModelOptions opts;
  opts.recompute = r;
  opts.precision = core::PrecisionPolicy{core::value_named<core::Dtype>(precision).value()};
  moe::Model model(*be, cfg, B, T, {}, opts);
  model.init_random(7);
  model.zero_grads();
  Result out;
  out.activation_bytes = model.activation_bytes();
  for (int64_t k = 0; k < micro; ++k) {
    std::vector<int32_t> tok(static_cast<size_t>(B * T)), tgt(tok.size());
    for (size_t i = 0; i < tok.size(); ++i) {
      const uint64_t g = static_cast<uint64_t>(k) * tok.size() + i;
      tok[i] = static_cast<int32_t>((g * 2654435761u + 17) % static_cast<uint64_t>(cfg.vocab_size));
      tgt[i] = static_cast<int32_t>((g * 40503u + 5) % static_cast<uint64_t>(cfg.vocab_size));
    }
    const auto f = model.forward(tok.data(), tgt.data(), B, T);
    out.losses.push_back(f.loss);
    model.backward(1.0f / static_cast<float>(micro));
    const auto c = model.expert_counts();
    if (out.counts.empty()) out.counts.assign(c.size(), std::vector<int64_t>(c.empty() ? 0 : c[0].size(), 0));
    for (size_t l = 0; l < c.size(); ++l)
      for (size_t e = 0; e < c[l].size(); ++e) out.counts[l][e] += c[l][e];
  }
  out.grads.resize(static_cast<size_t>(model.num_params()));
  be->copy_to_host(out.grads.data(), model.grads(), out.grads.size() * sizeof(float));
  return out;
}

class Checkpointing : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

core::ModelConfig config_of(const std::string& name) { return name == "qwen" ? qwen() : mixtral(); }

TEST_P(Checkpointing, FullAndSelectiveAreBitIdenticalToNone) {
  const auto [name, precision] = GetParam();
  const core::ModelConfig cfg = config_of(name);
  const Result none = run_window(cfg, Recompute::none, precision, 2, 2, 16);
  for (Recompute r : {Recompute::full, Recompute::selective}) {
    SCOPED_TRACE(core::name_of(r));
    const Result got = run_window(cfg, r, precision, 2, 2, 16);
    ASSERT_EQ(got.grads.size(), none.grads.size());
    EXPECT_EQ(0, std::memcmp(got.grads.data(), none.grads.data(), got.grads.size() * sizeof(float)))
        << "gradients differ";
    EXPECT_EQ(got.losses, none.losses);
    EXPECT_EQ(got.counts, none.counts);
    EXPECT_LT(got.activation_bytes, none.activation_bytes);
  }
  // the routing is decisive: every expert of every MoE layer got tokens (so the replay matters)
  for (const auto& layer : none.counts)
    for (int64_t c : layer) EXPECT_GT(c, 0);
  // and the gradients are not trivially zero
  double ss = 0;
  for (float g : none.grads) ss += static_cast<double>(g) * g;
  EXPECT_GT(ss, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Models, Checkpointing,
                         ::testing::Combine(::testing::Values("mixtral", "qwen"),
                                            ::testing::Values("fp32", "bf16", "fp16")),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::get<1>(info.param);
                         });

// ||a - b|| / ||b||
double norm_rel(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// k micro-batches of b vs one micro-batch of k*b: the same tokens, the same gradient (1.2e-7
// measured: fp32 summation order only). The Switch aux
// loss is per micro-batch (its load fractions are the micro-batch's), so it is not additive over a
// split; this test turns it off. CE and z are means over equal-sized micro-batches: additive.
TEST(Checkpointing, AccumulatedMicroBatchesEqualOneLargeBatch) {
  for (const std::string name : {"mixtral", "qwen"}) {
    core::ModelConfig cfg = config_of(name);
    cfg.moe.aux_loss_coef = 0;
    cfg.init_std = 0.02;  // the configs' usual scale
    // one micro-batch of 4 sequences vs 4 of 1: the token stream of run_window is the same
    const Result one = run_window(cfg, Recompute::none, "fp32", 1, 4, 16);
    for (Recompute r : {Recompute::none, Recompute::full, Recompute::selective}) {
      const Result four = run_window(cfg, r, "fp32", 4, 1, 16);
      const double rel = norm_rel(four.grads, one.grads);
      EXPECT_LT(rel, 1e-6) << name << " " << core::name_of(r);
      // the loss of the window: mean of the micro-batch losses = the large batch's loss
      double mean = 0;
      for (double l : four.losses) mean += l / 4;
      EXPECT_NEAR(mean, one.losses[0], 1e-6 * std::abs(one.losses[0]));
      EXPECT_EQ(four.counts, one.counts);
    }
  }
}

// The model's allocation equals the plan's count (the same registrations on a layout store, which
// allocates nothing); activations are allocated once, at construction, and a forward/backward
// allocates nothing more.
TEST(Checkpointing, ActivationBytesMatchThePlanAndStayFixed) {
  for (const std::string name : {"mixtral", "qwen"}) {
    core::ExperimentConfig cfg;
    cfg.model = config_of(name);
    cfg.train.micro_batch = 3;
    cfg.train.seq_len = 16;
    for (Recompute r : {Recompute::none, Recompute::full, Recompute::selective}) {
      cfg.train.activation_checkpointing = r;
      const launch::PlanEstimate p = launch::plan(cfg);
      auto be = core::make_cpu_backend(2);
      const int64_t before = be->memory_stats().live_bytes;
      moe::ModelOptions opts;
      opts.recompute = r;
      moe::Model model(*be, cfg.model, 3, 16, {}, opts);
      const int64_t arenas = 2 * ((model.num_params() * 4 + 63) / 64 * 64);  // params + grads
      EXPECT_EQ(be->memory_stats().live_bytes - before - arenas, model.activation_bytes());
      EXPECT_EQ(model.activation_bytes(), p.activation_bytes[static_cast<int>(r)]) << name << " " << core::name_of(r);
      model.init_random(1);
      std::vector<int32_t> tok(48, 3), tgt(48, 4);
      const int64_t live = be->memory_stats().live_bytes;
      be->reset_peak_memory();
      for (int i = 0; i < 2; ++i) {
        model.forward(tok.data(), tgt.data(), 3, 16);
        model.backward();
      }
      EXPECT_EQ(be->memory_stats().peak_bytes, live) << "a micro-batch allocated backend memory";
    }
  }
}

TEST(ActivationStore, SharedStorageAndGrowth) {
  auto be = core::make_cpu_backend(1);
  core::ActivationStore s(*be, Recompute::full);
  float *a0 = nullptr, *a1 = nullptr, *x0 = nullptr, *x1 = nullptr;
  s.add(0, "a", &a0, 100, core::Keep::expensive);  // shared under full
  s.add(1, "a", &a1, 150, core::Keep::expensive);
  s.add(0, "x", &x0, 10, core::Keep::always);  // per layer
  s.add(1, "x", &x1, 10, core::Keep::always);
  s.allocate();
  EXPECT_EQ(a0, a1);
  EXPECT_NE(x0, x1);
  EXPECT_EQ(s.shared_bytes(), 640);  // 150 floats rounded to 64 bytes
  EXPECT_EQ(s.kept_bytes(), 2 * 64);
  s.ensure<float>(0, "a", 1000);
  EXPECT_EQ(a0, a1);  // both layers follow the regrown shared buffer
  EXPECT_EQ(s.shared_bytes(), 4032);  // 4000 rounded up to 64 bytes
  a1[999] = 1.0f;     // writable
  s.ensure<float>(1, "x", 20);
  EXPECT_NE(x0, x1);
  x1[19] = 2.0f;
  core::ActivationStore none(*be, Recompute::none);
  float *b0 = nullptr, *b1 = nullptr;
  none.add(0, "a", &b0, 10, core::Keep::cheap);
  none.add(1, "a", &b1, 10, core::Keep::cheap);
  none.allocate();
  EXPECT_NE(b0, b1);
  EXPECT_TRUE(none.kept(core::Keep::cheap));
  EXPECT_FALSE(s.kept(core::Keep::cheap));
  EXPECT_FALSE(s.kept(core::Keep::scratch));
}

}  // namespace
}  // namespace switchyard
