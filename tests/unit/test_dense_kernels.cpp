// tests/unit/test_dense_kernels.cpp: the CPU dense kernels (embedding, RMSNorm, RoPE,
// cross-entropy, causal GQA attention) and the AttentionLayer, against naive double-precision
// references written here; backward kernels against central finite differences of those
// references (loss = sum(out * R) for a random R, so dout = R).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/attention_layer.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/params.h"
#include "tests/unit/testing.h"

namespace switchyard::core {
namespace {

using test::randn;
using dvec = std::vector<double>;

dvec to_d(const std::vector<float>& v) { return dvec(v.begin(), v.end()); }

// |got - want| <= rtol * (|want| + 0.1 * max|want|) for every element.
void expect_close(const std::string& what, const float* got, const double* want, int64_t n,
                  double rtol) {
  double scale = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::abs(want[i]));
  int64_t bad = 0, worst = -1;
  double worst_ratio = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double tol = rtol * (std::abs(want[i]) + 0.1 * scale) + 1e-30;
    const double ratio = std::abs(got[i] - want[i]) / tol;
    if (!(ratio <= 1.0)) ++bad;
    if (!(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << "/" << n << " elements off; worst at " << worst
                    << ": got " << (worst >= 0 ? got[worst] : 0.f) << " want "
                    << (worst >= 0 ? want[worst] : 0.0) << " (" << worst_ratio << "x tolerance)";
}
void expect_close(const std::string& what, const std::vector<float>& got, const dvec& want,
                  double rtol) {
  ASSERT_EQ(got.size(), want.size()) << what;
  expect_close(what, got.data(), want.data(), static_cast<int64_t>(got.size()), rtol);
}

// k random indices in [0, n), repeats possible (all of them, in order, when k >= n).
std::vector<int64_t> pick(int64_t n, int64_t k, uint64_t seed) {
  std::vector<int64_t> idx;
  if (k >= n) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
    return idx;
  }
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> d(0, n - 1);
  for (int64_t i = 0; i < k; ++i) idx.push_back(d(rng));
  return idx;
}

// Checks got[i] (analytic gradient of `loss` w.r.t. x[i]) against central differences of the
// double `loss`, for i in idx.
void fd_check(const std::string& what, const std::function<double(const dvec&)>& loss, dvec x,
              const float* got, const std::vector<int64_t>& idx, double rtol) {
  dvec want;
  std::vector<float> have;
  for (int64_t i : idx) {
    const double save = x[i], h = 1e-5 * std::max(1.0, std::abs(save));
    x[i] = save + h;
    const double lp = loss(x);
    x[i] = save - h;
    const double lm = loss(x);
    x[i] = save;
    want.push_back((lp - lm) / (2 * h));
    have.push_back(got[i]);
  }
  expect_close(what, have, want, rtol);
}

double dot(const dvec& a, const std::vector<float>& r) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * r[i];
  return s;
}

// ---------------------------------------------------------------- references (double)

dvec ref_rmsnorm(const dvec& x, const dvec& w, int64_t N, int64_t C, double eps, dvec* rstd) {
  dvec out(x.size());
  if (rstd) rstd->assign(N, 0);
  for (int64_t r = 0; r < N; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += x[r * C + c] * x[r * C + c];
    const double rs = 1.0 / std::sqrt(ss / C + eps);
    if (rstd) (*rstd)[r] = rs;
    for (int64_t c = 0; c < C; ++c) out[r * C + c] = x[r * C + c] * rs * w[c];
  }
  return out;
}

// Rotate-half RoPE from the formula: angle = t * theta^(-2i/HD), pairs (i, i + HD/2).
void ref_rope(dvec& qkv, const AttentionShape& s, double theta) {
  const int64_t W = s.qkv_width(), half = s.HD / 2;
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t t = 0; t < s.T; ++t)
      for (int64_t h = 0; h < s.NH + s.NKV; ++h)  // q heads then k heads; v untouched
        for (int64_t i = 0; i < half; ++i) {
          const double angle = t * std::pow(theta, -2.0 * i / s.HD);
          double* x = qkv.data() + (b * s.T + t) * W + h * s.HD;
          const double a = x[i], c = x[i + half];
          x[i] = a * std::cos(angle) - c * std::sin(angle);
          x[i + half] = c * std::cos(angle) + a * std::sin(angle);
        }
}

// Causal GQA with explicit T x T scores and a mask.
void ref_attention(const dvec& qkv, const AttentionShape& s, dvec& out, dvec& lse) {
  const int64_t T = s.T, HD = s.HD, W = s.qkv_width(), QW = s.q_width();
  out.assign(s.B * T * QW, 0);
  lse.assign(s.B * s.NH * T, 0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(HD));
  std::vector<double> S(T * T);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.NH; ++h) {
      const int64_t g = h / (s.NH / s.NKV);
      auto q = [&](int64_t t, int64_t c) { return qkv[(b * T + t) * W + h * HD + c]; };
      auto k = [&](int64_t t, int64_t c) { return qkv[(b * T + t) * W + QW + g * HD + c]; };
      auto v = [&](int64_t t, int64_t c) {
        return qkv[(b * T + t) * W + QW + (s.NKV + g) * HD + c];
      };
      for (int64_t i = 0; i < T; ++i)
        for (int64_t j = 0; j < T; ++j) {
          double d = 0;
          for (int64_t c = 0; c < HD; ++c) d += q(i, c) * k(j, c);
          S[i * T + j] = j <= i ? d * scale : -INFINITY;
        }
      for (int64_t i = 0; i < T; ++i) {
        double mx = -INFINITY, sum = 0;
        for (int64_t j = 0; j < T; ++j) mx = std::max(mx, S[i * T + j]);
        for (int64_t j = 0; j < T; ++j) sum += std::exp(S[i * T + j] - mx);
        lse[(b * s.NH + h) * T + i] = mx + std::log(sum);
        for (int64_t j = 0; j < T; ++j) {
          const double p = std::exp(S[i * T + j] - mx) / sum;
          for (int64_t c = 0; c < HD; ++c) out[(b * T + i) * QW + h * HD + c] += p * v(j, c);
        }
      }
    }
}

dvec ref_cross_entropy(const dvec& logits, const std::vector<int32_t>& targets, int64_t N,
                       int64_t V) {
  dvec loss(N, 0);
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] < 0) continue;
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, logits[i * V + j]);
    for (int64_t j = 0; j < V; ++j) sum += std::exp(logits[i * V + j] - mx);
    loss[i] = mx + std::log(sum) - logits[i * V + targets[i]];
  }
  return loss;
}

class DenseKernels : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend(2);
};

// ---------------------------------------------------------------- embedding

TEST_F(DenseKernels, EmbeddingForwardAndBackwardWithRepeatedTokens) {
  for (int64_t C : {37, 64}) {
    const int64_t V = 11, N = 50;
    auto wte = randn(V * C, 1);
    std::vector<int32_t> tok(N);
    std::mt19937 rng(7);
    for (auto& t : tok) t = static_cast<int32_t>(rng() % 3);  // heavy repetition
    tok[5] = V - 1;
    std::vector<float> out(N * C);
    be->embedding_forward(out.data(), tok.data(), wte.data(), N, C);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) ASSERT_EQ(out[n * C + c], wte[tok[n] * C + c]);

    auto dout = randn(N * C, 2);
    auto dwte = randn(V * C, 3);  // accumulates into existing values
    dvec want = to_d(dwte);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) want[tok[n] * C + c] += dout[n * C + c];
    be->embedding_backward(dwte.data(), dout.data(), tok.data(), N, C);
    expect_close("dwte C=" + std::to_string(C), dwte, want, 1e-5);
  }
}

// ---------------------------------------------------------------- RMSNorm

TEST_F(DenseKernels, RmsnormForwardBackward) {
  for (int64_t C : {37, 256}) {
    const int64_t N = 19;
    const float eps = 1e-5f;
    auto x = randn(N * C, 10, 1.5f);
    auto w = randn(C, 11, 0.5f);
    for (auto& v : w) v += 1.0f;
    std::vector<float> out(N * C), rstd(N);
    be->rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    dvec want_rstd;
    dvec want = ref_rmsnorm(to_d(x), to_d(w), N, C, eps, &want_rstd);
    expect_close("rmsnorm out", out, want, 2e-6);
    expect_close("rmsnorm rstd", rstd, want_rstd, 2e-6);

    auto R = randn(N * C, 12);
    std::vector<float> dx(N * C);
    auto dw = randn(C, 13);
    const auto dw0 = dw;
    be->rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
    const dvec wd = to_d(w), xd = to_d(x);
    fd_check("rmsnorm dx", [&](const dvec& xx) { return dot(ref_rmsnorm(xx, wd, N, C, eps, nullptr), R); },
             xd, dx.data(), pick(N * C, N * C, 0), 1e-4);
    std::vector<float> ddw(C);
    for (int64_t c = 0; c < C; ++c) ddw[c] = dw[c] - dw0[c];
    fd_check("rmsnorm dw", [&](const dvec& ww) { return dot(ref_rmsnorm(xd, ww, N, C, eps, nullptr), R); },
             wd, ddw.data(), pick(C, C, 0), 1e-4);
  }
}

// ---------------------------------------------------------------- RoPE

TEST_F(DenseKernels, RopeForwardBackward) {
  struct Case { int64_t B, T, NH, NKV, HD; float theta; };
  for (Case k : {Case{2, 7, 4, 2, 8, 10000.f}, Case{1, 33, 2, 2, 16, 1e6f}, Case{2, 7, 4, 2, 8, 500.f}}) {
    AttentionShape s{k.B, k.T, k.NH, k.NKV, k.HD};
    const int64_t n = s.B * s.T * s.qkv_width();
    const std::string tag = " T=" + std::to_string(k.T) + " HD=" + std::to_string(k.HD);
    auto x = randn(n, 20 + k.T);
    auto y = x;
    be->rope_forward(y.data(), s, k.theta);
    dvec want = to_d(x);
    ref_rope(want, s, k.theta);
    expect_close("rope forward" + tag, y, want, 1e-5);
    for (int64_t r = 0; r < s.B * s.T; ++r)  // v untouched, bit for bit
      for (int64_t c = (s.NH + s.NKV) * s.HD; c < s.qkv_width(); ++c)
        ASSERT_EQ(y[r * s.qkv_width() + c], x[r * s.qkv_width() + c]);

    auto R = randn(n, 30 + k.T);
    auto g = R;
    be->rope_backward(g.data(), s, k.theta);
    fd_check("rope backward" + tag,
             [&](const dvec& xx) { dvec q = xx; ref_rope(q, s, k.theta); return dot(q, R); },
             to_d(x), g.data(), pick(n, n, 0), 1e-5);
    be->rope_backward(y.data(), s, k.theta);  // inverse rotation restores x
    expect_close("rope round trip" + tag, y, to_d(x), 1e-5);
  }
}

// ---------------------------------------------------------------- cross-entropy

TEST_F(DenseKernels, CrossEntropyWithIgnoredTargets) {
  const int64_t N = 37, V = 50;
  auto logits = randn(N * V, 40, 3.0f);
  for (int64_t j = 0; j < V; ++j) logits[3 * V + j] += 1000.0f;  // stability: a huge row
  std::vector<int32_t> tgt(N);
  std::mt19937 rng(41);
  for (auto& t : tgt) t = static_cast<int32_t>(rng() % V);
  tgt[0] = -1;
  tgt[7] = -100;
  tgt[N - 1] = -1;
  std::vector<float> loss(N);
  be->cross_entropy_forward(loss.data(), logits.data(), tgt.data(), N, V);
  const dvec want = ref_cross_entropy(to_d(logits), tgt, N, V);
  expect_close("ce loss", loss, want, 1e-5);
  EXPECT_EQ(loss[0], 0.0f);
  EXPECT_EQ(loss[7], 0.0f);

  auto dloss = randn(N, 42);
  std::vector<float> dlogits(N * V, 123.0f);
  be->cross_entropy_backward(dlogits.data(), logits.data(), tgt.data(), dloss.data(), N, V);
  fd_check("ce dlogits",
           [&](const dvec& l) { return dot(ref_cross_entropy(l, tgt, N, V), dloss); },
           to_d(logits), dlogits.data(), pick(N * V, N * V, 0), 1e-4);
  for (int64_t j = 0; j < V; ++j) ASSERT_EQ(dlogits[7 * V + j], 0.0f);

  auto inplace = logits;  // dlogits == logits
  be->cross_entropy_backward(inplace.data(), inplace.data(), tgt.data(), dloss.data(), N, V);
  expect_close("ce in place", inplace, to_d(dlogits), 1e-6);
}

// ---------------------------------------------------------------- attention

struct AttnCase {
  int64_t B, T, NH, NKV, HD, fd_points;
};

void check_attention(Backend& be, const AttnCase& k) {
  AttentionShape s{k.B, k.T, k.NH, k.NKV, k.HD};
  const std::string tag = " B=" + std::to_string(k.B) + " T=" + std::to_string(k.T) +
                          " NH=" + std::to_string(k.NH) + " NKV=" + std::to_string(k.NKV) +
                          " HD=" + std::to_string(k.HD);
  const int64_t n = s.B * s.T * s.qkv_width(), no = s.B * s.T * s.q_width();
  auto qkv = randn(n, 50 + k.T, 1.0f);
  std::vector<float> out(no), lse(s.B * s.NH * s.T);
  be.attention_forward(out.data(), lse.data(), qkv.data(), s);
  dvec want, want_lse;
  ref_attention(to_d(qkv), s, want, want_lse);
  expect_close("attention out" + tag, out, want, 2e-5);
  expect_close("attention lse" + tag, lse, want_lse, 2e-5);

  auto R = randn(no, 60 + k.T);
  std::vector<float> dqkv(n, 77.0f);  // written in full
  be.attention_backward(dqkv.data(), R.data(), out.data(), lse.data(), qkv.data(), s);
  fd_check("attention dqkv" + tag,
           [&](const dvec& x) { dvec o, l; ref_attention(x, s, o, l); return dot(o, R); },
           to_d(qkv), dqkv.data(), pick(n, k.fd_points, 70 + k.T), 2e-4);
}

TEST_F(DenseKernels, AttentionGqaSmall) { check_attention(*be, {2, 7, 4, 2, 8, 1 << 30}); }
TEST_F(DenseKernels, AttentionGqaSingleKvHead) { check_attention(*be, {1, 33, 4, 1, 16, 400}); }
TEST_F(DenseKernels, AttentionMultiHead) { check_attention(*be, {2, 33, 2, 2, 16, 400}); }
TEST_F(DenseKernels, AttentionLongSequences) {
  check_attention(*be, {1, 150, 2, 1, 8, 120});  // several row blocks, per-head partials
  check_attention(*be, {3, 130, 4, 2, 8, 120});  // several row blocks, per kv head
}

// ---------------------------------------------------------------- AttentionLayer

// The shared small model (d_model 32, 4 heads / 2 kv heads, 16 positions, rope_theta 10000) with
// vocabulary 16, 2 experts top-1 of width 8, and q/k/v biases as asked.
ModelConfig tiny_config(bool bias) {
  ModelConfig c = test::small_moe_model(2);
  c.vocab_size = 16;
  c.qkv_bias = bias;
  c.moe.n_experts = 2;
  c.moe.top_k = 1;
  c.moe.expert_size = 8;
  c.moe.z_loss_coef = 0.0;
  return c;
}

// out = attention(rope(x Wqkv^T + b)) Wo^T in double.
dvec ref_layer(const dvec& x, const dvec& wqkv, const dvec* bias, const dvec& wo,
               const AttentionShape& s, int64_t C, double theta) {
  const int64_t N = s.B * s.T, W = s.qkv_width(), QW = s.q_width();
  dvec qkv(N * W);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t o = 0; o < W; ++o) {
      double acc = bias ? (*bias)[o] : 0.0;
      for (int64_t c = 0; c < C; ++c) acc += x[r * C + c] * wqkv[o * C + c];
      qkv[r * W + o] = acc;
    }
  ref_rope(qkv, s, theta);
  dvec att, lse;
  ref_attention(qkv, s, att, lse);
  dvec out(N * C, 0);
  for (int64_t r = 0; r < N; ++r)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < QW; ++j) out[r * C + c] += att[r * QW + j] * wo[c * QW + j];
  return out;
}

void check_layer(Backend& be, bool bias) {
  const ModelConfig cfg = tiny_config(bias);
  const ParamTable table = make_param_table(cfg);
  const int layer = 1;
  const int64_t B = 2, T = 6, N = B * T, C = cfg.d_model;
  AttentionShape s{B, T, cfg.n_heads, cfg.n_kv_heads, cfg.hd()};
  const int64_t W = s.qkv_width(), QW = s.q_width();

  Arena params(be, table.total()), grads(be, table.total());
  auto pv = randn(table.total(), 90, 0.3f);
  auto gv = randn(table.total(), 91);  // grads accumulate into existing values
  be.copy_from_host(params.data(), pv.data(), pv.size() * sizeof(float));
  be.copy_from_host(grads.data(), gv.data(), gv.size() * sizeof(float));
  const std::string p = "model.layers.1.self_attn.";
  const int64_t off_w = table.at(p + "q_proj.weight").offset, off_o = table.at(p + "o_proj.weight").offset;
  const int64_t off_b = bias ? table.at(p + "q_proj.bias").offset : -1;
  auto slice = [&](int64_t off, int64_t len) { return dvec(pv.begin() + off, pv.begin() + off + len); };
  const dvec wqkv = slice(off_w, W * C), wo = slice(off_o, C * QW);
  const dvec bq = bias ? slice(off_b, W) : dvec();

  AttentionLayer attn(be, cfg, table, layer, N + 5);  // B*T < max_tokens
  auto x = randn(N * C, 92);
  std::vector<float> out(N * C), dx(N * C, 55.0f);
  attn.forward(out.data(), x.data(), params.data(), B, T);
  const double theta = static_cast<float>(cfg.rope_theta);
  const dvec xd = to_d(x);
  expect_close("layer out", out, ref_layer(xd, wqkv, bias ? &bq : nullptr, wo, s, C, theta), 2e-5);

  auto R = randn(N * C, 93);
  attn.backward(dx.data(), R.data(), x.data(), params.data(), grads.data(), B, T);
  std::vector<float> g(table.total());
  be.copy_to_host(g.data(), grads.data(), g.size() * sizeof(float));
  for (size_t i = 0; i < g.size(); ++i) g[i] -= gv[i];  // the accumulated part
  for (const ParamSpec& ps : table.specs()) {  // only this layer's attention tensors are touched
    if (ps.name.rfind(p, 0) == 0) continue;
    for (int64_t i = ps.offset; i < ps.offset + ps.numel; ++i) {
      ASSERT_EQ(g[i], 0.0f) << ps.name;
    }
  }

  fd_check("layer dx",
           [&](const dvec& xx) { return dot(ref_layer(xx, wqkv, bias ? &bq : nullptr, wo, s, C, theta), R); },
           xd, dx.data(), pick(N * C, N * C, 0), 2e-4);
  fd_check("layer dWqkv",
           [&](const dvec& w) { return dot(ref_layer(xd, w, bias ? &bq : nullptr, wo, s, C, theta), R); },
           wqkv, g.data() + off_w, pick(W * C, 300, 94), 2e-4);
  fd_check("layer dWo",
           [&](const dvec& w) { return dot(ref_layer(xd, wqkv, bias ? &bq : nullptr, w, s, C, theta), R); },
           wo, g.data() + off_o, pick(C * QW, 200, 95), 2e-4);
  if (bias)
    fd_check("layer dbias",
             [&](const dvec& bb) { return dot(ref_layer(xd, wqkv, &bb, wo, s, C, theta), R); },
             bq, g.data() + off_b, pick(W, W, 0), 2e-4);
}

TEST_F(DenseKernels, AttentionLayerNoBias) { check_layer(*be, false); }
TEST_F(DenseKernels, AttentionLayerWithQkvBias) { check_layer(*be, true); }

// ---------------------------------------------------------------- optimizer and memory

// AdamW over a span whose length is not a multiple of the vector width (vector body + scalar
// tail), against the formula in double.
TEST_F(DenseKernels, AdamwUpdateMatchesFormula) {
  const int64_t n = 1000 + 13;
  auto p = randn(n, 901, 0.5f), g = randn(n, 902, 0.1f), m = randn(n, 903, 0.01f),
       v = randn(n, 904, 0.001f);
  for (auto& x : v) x = x * x;  // second moments are >= 0
  const float gs = 0.7f, lr = 1e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  const float bc1 = 1.0f - std::pow(b1, 3.0f), bc2 = 1.0f - std::pow(b2, 3.0f);
  dvec wp(n), wm(n), wv(n);
  for (int64_t i = 0; i < n; ++i) {
    const double gi = static_cast<double>(g[i]) * gs;
    wm[i] = b1 * static_cast<double>(m[i]) + (1.0 - b1) * gi;
    wv[i] = b2 * static_cast<double>(v[i]) + (1.0 - b2) * gi * gi;
    wp[i] = static_cast<double>(p[i]) * (1.0 - static_cast<double>(lr) * wd) -
            lr * (wm[i] / bc1) / (std::sqrt(wv[i] / bc2) + eps);
  }
  be->adamw_update(p.data(), g.data(), m.data(), v.data(), n, gs, lr, b1, b2, eps, wd, bc1, bc2);
  expect_close("adamw m", m, wm, 1e-5);
  expect_close("adamw v", v, wv, 1e-5);
  expect_close("adamw p", p, wp, 1e-5);
}

// zero() on a buffer large enough to be split across threads, with an odd length: every byte
// inside is cleared, the bytes around it are left alone.
TEST_F(DenseKernels, ZeroLargeOddBuffer) {
  const size_t bytes = (size_t{3} << 20) + 4099;
  std::vector<unsigned char> buf(bytes + 128, 0xAB);
  be->zero(buf.data() + 64, bytes);
  for (size_t i = 0; i < buf.size(); ++i) {
    const bool inside = i >= 64 && i < 64 + bytes;
    ASSERT_EQ(buf[i], inside ? 0 : 0xAB) << "byte " << i;
  }
}

// ---------------------------------------------------------------- fused residual + RMSNorm

// add_rmsnorm_forward against the double reference of (a + b) -> RMSNorm, bitwise against the
// unfused add + rmsnorm_forward, and with sum aliasing a (the in-place residual update).
TEST_F(DenseKernels, AddRmsnormForwardMatchesReferenceAndUnfused) {
  for (int64_t C : {37, 256}) {
    const int64_t N = 23;
    const float eps = 1e-5f;
    auto a = randn(N * C, 910, 1.2f), b = randn(N * C, 911, 0.7f), w = randn(C, 912, 0.5f);
    for (auto& v : w) v += 1.0f;
    std::vector<float> sum(N * C), out(N * C), rstd(N);
    be->add_rmsnorm_forward(sum.data(), out.data(), rstd.data(), a.data(), b.data(), w.data(), N,
                            C, eps);
    dvec sd(N * C);
    for (int64_t i = 0; i < N * C; ++i) sd[i] = static_cast<double>(a[i]) + b[i];
    dvec want_rstd;
    const dvec want = ref_rmsnorm(sd, to_d(w), N, C, eps, &want_rstd);
    expect_close("add_rmsnorm sum", sum, sd, 1e-7);
    expect_close("add_rmsnorm out", out, want, 2e-6);
    expect_close("add_rmsnorm rstd", rstd, want_rstd, 2e-6);

    std::vector<float> sum2(N * C), out2(N * C), rstd2(N);
    be->add(sum2.data(), a.data(), b.data(), N * C);
    be->rmsnorm_forward(out2.data(), rstd2.data(), sum2.data(), w.data(), N, C, eps);
    EXPECT_EQ(sum, sum2);
    EXPECT_EQ(out, out2);
    EXPECT_EQ(rstd, rstd2);

    auto a3 = a;  // sum written over a
    std::vector<float> out3(N * C), rstd3(N);
    be->add_rmsnorm_forward(a3.data(), out3.data(), rstd3.data(), a3.data(), b.data(), w.data(),
                            N, C, eps);
    EXPECT_EQ(a3, sum);
    EXPECT_EQ(out3, out);
  }
}

// rmsnorm_backward_accumulate adds the input gradient to dx (finite differences of the double
// reference on top of the previous contents) and accumulates dw like rmsnorm_backward.
TEST_F(DenseKernels, RmsnormBackwardAccumulate) {
  for (int64_t C : {37, 256}) {
    const int64_t N = 21;
    const float eps = 1e-5f;
    auto x = randn(N * C, 920, 1.5f), w = randn(C, 921, 0.5f);
    for (auto& v : w) v += 1.0f;
    std::vector<float> out(N * C), rstd(N);
    be->rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    auto R = randn(N * C, 922);
    auto dx = randn(N * C, 923);  // the residual gradient already there
    const auto dx0 = dx;
    auto dw = randn(C, 924);
    const auto dw0 = dw;
    be->rmsnorm_backward_accumulate(dx.data(), dw.data(), R.data(), x.data(), w.data(),
                                    rstd.data(), N, C);
    std::vector<float> ddx(N * C), ddw(C);
    for (int64_t i = 0; i < N * C; ++i) ddx[i] = dx[i] - dx0[i];
    for (int64_t c = 0; c < C; ++c) ddw[c] = dw[c] - dw0[c];
    const dvec wd = to_d(w), xd = to_d(x);
    fd_check("rmsnorm acc dx",
             [&](const dvec& xx) { return dot(ref_rmsnorm(xx, wd, N, C, eps, nullptr), R); }, xd,
             ddx.data(), pick(N * C, N * C, 0), 1e-4);
    fd_check("rmsnorm acc dw",
             [&](const dvec& ww) { return dot(ref_rmsnorm(xd, ww, N, C, eps, nullptr), R); }, wd,
             ddw.data(), pick(C, C, 0), 1e-4);

    // the same as rmsnorm_backward into scratch + axpy, within a rounding of the sum
    std::vector<float> tmp(N * C), dw2 = dw0, dx2 = dx0;
    be->rmsnorm_backward(tmp.data(), dw2.data(), R.data(), x.data(), w.data(), rstd.data(), N, C);
    be->axpy(dx2.data(), 1.0f, tmp.data(), N * C);
    EXPECT_EQ(dw, dw2);
    for (int64_t i = 0; i < N * C; ++i)
      ASSERT_NEAR(dx[i], dx2[i], 1e-6 * (std::abs(dx2[i]) + 1.0)) << i;
  }
}

}  // namespace
}  // namespace switchyard::core
