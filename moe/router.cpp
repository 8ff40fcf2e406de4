// moe/router.cpp: router GEMMs around the backend's softmax/top-k kernels; balancing-loss math.
#include "moe/router.h"

#include "core/error.h"

namespace switchyard::moe {

Router::Router(int64_t C, int64_t E, int64_t K, core::RouterScoring scoring, bool renormalize,
               float top_p, int64_t w_offset, const core::PrecisionPolicy& prec)
    : C_(C), E_(E), K_(K), scoring_(scoring), renormalize_(renormalize), top_p_(top_p),
      w_offset_(w_offset), prec_(prec) {
  SY_CHECK(E >= 1 && K >= 1 && K <= E, "router: need 1 <= slots per token ({}) <= n_experts ({})",
           K, E);
  SY_CHECK(top_p >= 0.f && top_p <= 1.f, "router: top_p ({}) must be in [0, 1]", top_p);
}

void Router::forward(core::Backend& be, float* logits, float* probs, float* lse, int32_t* idx,
                     float* gates, const float* x, const float* params, int64_t N,
                     const float* bias) const {
  if (N == 0) return;
  const float* wr = params + w_offset_;
  // logits [N,E] = x [N,C] Wr^T
  be.gemm(false, true, N, E_, C_, 1.0f, x, C_, wr, C_, 0.0f, logits, E_, prec_.router());
  be.router_topk(probs, lse, idx, gates, logits, N, E_, K_, {scoring_, renormalize_, bias, top_p_});
}

void Router::backward(core::Backend& be, float* dx, float* grads, float* dlogits,
                      const float* dgates, const float* logits, const float* probs, const float* lse, const int32_t* idx,
                      const float* gates, const float* dprobs_all, float z_coef, const float* x,
                      const float* params, int64_t N) const {
  if (N == 0) return;
  be.router_backward(dlogits, dgates, logits, probs, lse, idx, gates, dprobs_all, z_coef, N, E_,
                     K_, {scoring_, renormalize_, nullptr, top_p_});
  // dWr [E,C] += dlogits^T x
  be.gemm(true, false, E_, C_, N, 1.0f, dlogits, E_, x, C_, 1.0f, grads + w_offset_, C_,
          prec_.router_wgrad());
  // dx [N,C] += dlogits Wr
  be.gemm(false, false, N, C_, E_, 1.0f, dlogits, E_, params + w_offset_, C_, 1.0f, dx, C_,
          prec_.router_dgrad());
}

double aux_loss(const std::vector<int64_t>& counts, double count_tokens,
                const std::vector<double>& prob_sums, double prob_tokens) {
  if (count_tokens == 0 || prob_tokens == 0) return 0.0;
  const double E = static_cast<double>(counts.size());
  double s = 0;
  for (size_t e = 0; e < counts.size(); ++e)
    s += static_cast<double>(counts[e]) / count_tokens * (prob_sums[e] / prob_tokens);
  return E * s;
}

void aux_loss_dprobs(std::vector<float>& out, const std::vector<int64_t>& counts,
                     double count_tokens, double prob_tokens, double d_aux) {
  out.resize(counts.size());
  const double E = static_cast<double>(counts.size());
  const bool none = count_tokens == 0 || prob_tokens == 0;
  for (size_t e = 0; e < counts.size(); ++e)
    out[e] = none ? 0.f
                  : static_cast<float>(d_aux * E * static_cast<double>(counts[e]) / count_tokens / prob_tokens);
}

void update_selection_bias(float* bias, const int64_t* load, int64_t E, double rate) {
  if (E <= 0) return;
  double total = 0;
  for (int64_t e = 0; e < E; ++e) total += static_cast<double>(load[e]);
  const double mean = total / static_cast<double>(E);
  const float step = static_cast<float>(rate);
  for (int64_t e = 0; e < E; ++e) {
    const double l = static_cast<double>(load[e]);
    bias[e] += l < mean ? step : l > mean ? -step : 0.f;
  }
}

}  // namespace switchyard::moe
