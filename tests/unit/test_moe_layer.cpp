// tests/unit/test_moe_layer.cpp: the whole MoeLayer against a double reference straight from the
// definitions and finite differences (routing, experts, shared expert, balancing losses), ties of
// a uniform router, and the global-scope aux loss (the kernels: test_moe.cpp).
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
