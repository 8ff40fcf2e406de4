// tests/unit/test_mixed_precision.cpp: the model under the mixed-precision policy.
//  - the optimizer's fused compute-weight write (AdamW::step into Model::begin_update's compute
//    copy, router weights restored by end_update) gives exactly the compute weights a full
//    refresh gives: the next forward is bit-identical;
//  - bf16 and fp16 gradients are close to fp32 (fp16, with 3 more significand bits, closer) and
//    loss scaling changes fp16 gradients only by rounding (the scale is a power of two);
//  - fp16 storage overflows to inf where a GPU's would (a huge weight), bf16 does not.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/precision.h"
#include "moe/model.h"
#include "optim/adamw.h"
#include "tests/unit/testing.h"

namespace switchyard {
namespace {

core::ModelConfig small() { return test::small_moe_model(2); }

void batch(std::vector<int32_t>& tok, std::vector<int32_t>& tgt, int salt) {
  for (size_t i = 0; i < tok.size(); ++i) {
    tok[i] = static_cast<int32_t>((i * 2654435761u + salt) % 64);
    tgt[i] = static_cast<int32_t>((i * 40503u + 7 + salt) % 64);
  }
}

std::vector<float> grads_of(moe::Model& m) {
  std::vector<float> g(static_cast<size_t>(m.num_params()));
  m.backend().copy_to_host(g.data(), m.grads(), g.size() * sizeof(float));
  return g;
}

double norm_rel(const std::vector<float>& a, const std::vector<float>& b, double scale_a = 1.0) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = a[i] / scale_a;
    num += (x - b[i]) * (x - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

TEST(MixedPrecision, FusedComputeWeightWriteEqualsFullRefresh) {
  for (const char* p : {"bf16", "fp16"}) {
    auto be = core::make_cpu_backend(2);
    moe::ModelOptions o;
    o.precision = core::PrecisionPolicy{core::value_named<core::Dtype>(p).value()};
    const auto cfg = small();
    moe::Model fused(*be, cfg, 2, 16, {}, o), full(*be, cfg, 2, 16, {}, o);
    core::OptimConfig oc;
    optim::AdamW opt_fused(*be, fused.table(), oc), opt_full(*be, full.table(), oc);
    std::vector<int32_t> tok(32), tgt(32);
    std::vector<double> losses[2];
    for (int step = 0; step < 3; ++step) {
      batch(tok, tgt, step);
      int k = 0;
      for (moe::Model* m : {&fused, &full}) {
        if (step == 0) m->init_random(5);
        m->zero_grads();
        losses[k].push_back(m->forward(tok.data(), tgt.data(), 2, 16).loss);
        m->backward();
        if (m == &fused) {
          const auto t = m->begin_update();
          ASSERT_NE(t.compute, nullptr);
          opt_fused.step(t.master, m->grads(), 1e-2, 1.0, t.compute, t.dtype);
          m->end_update();
        } else {
          opt_full.step(m->params(), m->grads(), 1e-2);  // marks stale: full refresh next forward
        }
        ++k;
      }
    }
    EXPECT_EQ(losses[0], losses[1]) << p;
    EXPECT_NE(losses[0][0], losses[0][2]) << "the updates changed nothing";
  }
}

TEST(MixedPrecision, GradientsCloseToFp32AndLossScaleExact) {
  auto be = core::make_cpu_backend(2);
  const auto cfg = small();
  std::vector<int32_t> tok(32), tgt(32);
  batch(tok, tgt, 1);
  auto run = [&](const char* p, float scale) {
    moe::ModelOptions o;
    o.precision = core::PrecisionPolicy{core::value_named<core::Dtype>(p).value()};
    moe::Model m(*be, cfg, 2, 16, {}, o);
    m.init_random(3);
    m.zero_grads();
    m.forward(tok.data(), tgt.data(), 2, 16);
    m.backward(scale);
    return grads_of(m);
  };
  const auto g32 = run("fp32", 1), g_bf16 = run("bf16", 1), g_f16 = run("fp16", 1024);
  const double e_bf16 = norm_rel(g_bf16, g32), e_f16 = norm_rel(g_f16, g32, 1024);
  EXPECT_GT(e_bf16, 1e-4);  // rounding happened
  EXPECT_LT(e_bf16, 5e-2);
  EXPECT_LT(e_f16, e_bf16 / 3);  // 11 vs 8 significand bits
  EXPECT_GT(e_f16, 1e-6);
  // a power-of-two loss scale moves every fp16 value by an exact exponent shift unless it leaves
  // fp16's normal range: 1024 vs 4096 agree to rounding noise of the fp32 accumulation only
  const auto g_f16b = run("fp16", 4096);
  EXPECT_LT(norm_rel(g_f16b, g_f16, 4.0), 1e-6);
}

TEST(MixedPrecision, Fp16OverflowsWhereAGpuWould) {
  auto be = core::make_cpu_backend(2);
  auto cfg = small();
  std::vector<int32_t> tok(32), tgt(32);
  batch(tok, tgt, 2);
  for (const char* p : {"fp32", "bf16", "fp16"}) {
    moe::ModelOptions o;
    o.precision = core::PrecisionPolicy{core::value_named<core::Dtype>(p).value()};
    moe::Model m(*be, cfg, 2, 16, {}, o);
    m.init_random(3);
    // one q_proj weight of 3e4: q = ln1 * w reaches ~1e5 > 65504 for fp16, fine in fp32 and bf16
    std::vector<float> host(static_cast<size_t>(m.num_params()));
    m.params_to_host(host.data());
    host[static_cast<size_t>(m.table().at("model.layers.0.self_attn.q_proj.weight").offset)] = 3e4f;
    m.set_params_from_host(host.data());
    const double loss = m.forward(tok.data(), tgt.data(), 2, 16).loss;
    if (std::string(p) == "fp16") {
      EXPECT_FALSE(std::isfinite(loss)) << p;
      EXPECT_EQ(m.first_nonfinite_block(), 0);
    } else {
      EXPECT_TRUE(std::isfinite(loss)) << p;
      EXPECT_EQ(m.first_nonfinite_block(), cfg.n_layers);
    }
  }
}

}  // namespace
}  // namespace switchyard
