// tests/unit/test_model_conformance.cpp: the whole model on each backend against the CPU backend:
// the same weights and batches, then loss, logits, expert counts, every gradient and the weights
// after AdamW steps, under fp32 and bf16 and with and without activation checkpointing. The
// per-op conformance suite (test_backend_conformance.cpp) checks each kernel; this checks that the
// layers, the model and the optimizer drive a backend only through its table (no host access to
// its memory) and that the small per-op differences stay small through a whole model.
// Backends: "cpu" (against a second CPU backend: bit-identical) and "cuda" ("skipped: no GPU"
// where there is none).
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/backend.h"
#include "core/cpu/cpu_backend.h"
#include "core/cuda/cuda.h"
#include "moe/model.h"
#include "optim/adamw.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

// ||a - b|| / ||b|| (||a - b|| where b is 0); non-finite: +inf.
double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, w = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    d += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    w += static_cast<double>(b[i]) * b[i];
  }
  const double r = w > 0 ? std::sqrt(d / w) : std::sqrt(d);
  return std::isfinite(r) ? r : INFINITY;
}

// Tolerances (norm-relative) by compute dtype. fp32: the kernels' summation orders differ (the
// per-op suite allows 1e-5), compounded through two blocks and backward. bf16: a GEMM output on a
// rounding midpoint rounds one bf16 unit apart, and later roundings spread it (test_golden.cpp
// measures the same effect against PyTorch).
struct Tolerance {
  double loss, logits, grads, weights;
};
constexpr Tolerance kF32{1e-5, 1e-5, 1e-4, 1e-5}, kBf16{1e-3, 2e-2, 5e-2, 1e-3};

struct Case {
  core::Dtype precision;
  core::Recompute recompute;
  bool qwen;  // the Qwen2-MoE layout (shared expert, q/k/v biases) instead of Mixtral
};

class ModelConformance : public ::testing::TestWithParam<std::tuple<std::string, Case>> {
 protected:
  void SetUp() override {
    const std::string& name = std::get<0>(GetParam());
    if (name == "cuda") {
      if (core::cuda_device_count() == 0) GTEST_SKIP() << "skipped: no GPU";
      be_ = core::make_cuda_backend(0);
    } else {
      be_ = core::make_cpu_backend(2);
    }
    ref_ = core::make_cpu_backend(2);
    // the emulated bf16 GEMMs on the reference, whatever this CPU would pick (a fixed order)
    static_cast<core::CpuBackend&>(*ref_).set_native_bf16(false);
    if (auto* cpu = dynamic_cast<core::CpuBackend*>(be_.get())) cpu->set_native_bf16(false);
  }
  std::unique_ptr<core::Backend> be_, ref_;
};

core::ModelConfig model_config(bool qwen) {
  core::ModelConfig m = test::small_moe_model(2);
  if (qwen) {
    m.moe.shared_expert_size = 16;
    m.qkv_bias = true;
  }
  m.moe.aux_loss_coef = 0.01;
  return m;
}

TEST_P(ModelConformance, ForwardBackwardAndAdamWMatchTheCpu) {
  const Case& c = std::get<1>(GetParam());
  const Tolerance& tol = c.precision == core::Dtype::f32 ? kF32 : kBf16;
  const core::ModelConfig cfg = model_config(c.qwen);
  const int64_t B = 2, T = 16, N = B * T;
  moe::ModelOptions opts;
  opts.precision = core::PrecisionPolicy{c.precision};
  opts.recompute = c.recompute;
  moe::Model test(*be_, cfg, B, T, {}, opts), ref(*ref_, cfg, B, T, {}, opts);
  test.init_random(7);
  ref.init_random(7);
  core::OptimConfig oc;
  oc.lr = 1e-2;
  oc.weight_decay = 0.1;
  optim::AdamW adam_test(*be_, test.table(), oc), adam_ref(*ref_, ref.table(), oc);

  const auto tokens = test::randn(2 * N, 11);
  for (int step = 0; step < 3; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    std::vector<int32_t> tok(static_cast<size_t>(N)), tgt(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
      tok[i] = static_cast<int32_t>(std::abs(tokens[i + step * 7]) * 1000) % static_cast<int32_t>(cfg.vocab_size);
      tgt[i] = i % 5 == 4 ? -1 : static_cast<int32_t>(std::abs(tokens[N + i]) * 1000 + step) % static_cast<int32_t>(cfg.vocab_size);
    }
    test.zero_grads();
    ref.zero_grads();
    const auto rt = test.forward(tok.data(), tgt.data(), B, T);
    const auto rr = ref.forward(tok.data(), tgt.data(), B, T);
    EXPECT_NEAR(rt.loss, rr.loss, tol.loss * std::abs(rr.loss));
    EXPECT_NEAR(rt.aux, rr.aux, tol.loss * std::abs(rr.aux) + 1e-9);
    EXPECT_NEAR(rt.z, rr.z, tol.loss * std::abs(rr.z) + 1e-9);
    EXPECT_EQ(rt.tokens, rr.tokens);
    if (c.precision == core::Dtype::f32) {
      EXPECT_EQ(test.expert_counts(), ref.expert_counts());
    }
    const int64_t V = cfg.vocab_size;
    EXPECT_LT(rel_l2(test::to_host(*be_, test.logits(), N * V), test::to_host(*ref_, ref.logits(), N * V)), tol.logits);

    test.backward(0.5f);
    ref.backward(0.5f);
    const auto gt = test::to_host(*be_, test.grads(), test.num_params());
    const auto gr = test::to_host(*ref_, ref.grads(), ref.num_params());
    for (const auto& p : ref.table().specs()) {
      const std::vector<float> a(gt.begin() + p.offset, gt.begin() + p.offset + p.numel),
          b(gr.begin() + p.offset, gr.begin() + p.offset + p.numel);
      EXPECT_LT(rel_l2(a, b), tol.grads) << p.name;
    }
    const double norm = optim::grad_norm(*ref_, ref.grads(), ref.num_params());
    EXPECT_NEAR(optim::grad_norm(*be_, test.grads(), test.num_params()), norm, tol.grads * norm);
    for (auto [m, a, be] : {std::tuple{&test, &adam_test, be_.get()}, std::tuple{&ref, &adam_ref, ref_.get()}}) {
      const auto target = m->begin_update();
      a->step(target.master, m->grads(), oc.lr, 1.0, target.compute, target.dtype);
      m->end_update();
    }
    EXPECT_LT(rel_l2(test::to_host(*be_, static_cast<const moe::Model&>(test).params(), test.num_params()),
                     test::to_host(*ref_, static_cast<const moe::Model&>(ref).params(), ref.num_params())),
              tol.weights);
  }
}

std::string case_name(const ::testing::TestParamInfo<ModelConformance::ParamType>& info) {
  const Case& c = std::get<1>(info.param);
  return std::get<0>(info.param) + "_" + std::string(core::name_of(c.precision)) + "_" +
         std::string(core::name_of(c.recompute)) + (c.qwen ? "_qwen" : "_mixtral");
}

INSTANTIATE_TEST_SUITE_P(
    Backends, ModelConformance,
    ::testing::Combine(::testing::Values("cpu", "cuda"),
                       ::testing::Values(Case{core::Dtype::f32, core::Recompute::none, false},
                                         Case{core::Dtype::f32, core::Recompute::full, true},
                                         Case{core::Dtype::bf16, core::Recompute::none, true},
                                         Case{core::Dtype::bf16, core::Recompute::selective, false})),
    case_name);

}  // namespace
}  // namespace switchyard
